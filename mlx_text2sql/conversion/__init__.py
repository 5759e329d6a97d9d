"""Conversion: Examples from :mod:`mlx_text2sql.sources` -> train/valid/test JSONL records.

:func:`convert` runs one conversion with :class:`Settings`: it reads the source, assigns
splits (:mod:`.splitting`), checks that the gold SQL runs (:mod:`.gold`), builds each record
(schema selection and value hints, the schema fitted to ``max_tokens`` by :mod:`.fitting`, the
training form by :mod:`.records`) and writes the files and ``convert_report.json``
(:mod:`.report`), all replaced together only when everything succeeded. Records are made
through :mod:`mlx_text2sql.prompts` only.

Every record holds the training form (``messages`` by default; ``text`` with a chat template;
``prompt`` + ``completion``) plus ``question``, ``schema`` (the schema text of the prompt),
``sql`` (gold), ``source``, ``id``, ``db_path`` (relative to the JSONL's folder, null when
none), ``table`` (WikiSQL), ``db_id`` and ``meta``. ``prompts.record_messages(record)``
rebuilds the prompt from any of them.

Pure Python: no MLX import (transformers and datasets only when their settings are used).
"""

from __future__ import annotations

from .fitting import ANSWER_RESERVE, Fitted, fit_schema
from .gold import GOLD_TIME_LIMIT_S, GoldStats, check_gold
from .hf_datasets import load_hf_splits
from .pipeline import convert
from .records import CHARS_PER_TOKEN, Renderer, json_line, load_tokenizer, make_record, write_lines
from .report import REPORT_NAME, Summary, print_summary
from .settings import Settings
from .splitting import DEFAULT_SPLIT_MAP, assign_splits

__all__ = [
    "ANSWER_RESERVE", "CHARS_PER_TOKEN", "DEFAULT_SPLIT_MAP", "Fitted", "GOLD_TIME_LIMIT_S",
    "GoldStats", "REPORT_NAME", "Renderer", "Settings", "Summary", "assign_splits",
    "check_gold", "convert", "fit_schema", "json_line", "load_hf_splits", "load_tokenizer",
    "make_record", "print_summary", "write_lines",
]
