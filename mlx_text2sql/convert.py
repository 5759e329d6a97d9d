"""``convert``: a Text2SQL dataset in its original format -> train/valid/test JSONL.

    python -m mlx_text2sql.convert FORMAT INPUT --out DIR

FORMAT is ``wikisql``, ``nsql``, ``sql-create-context`` or ``spider`` (one converter each in
:mod:`mlx_text2sql.sources`); each yields the same :class:`~mlx_text2sql.example.Example`,
and this module turns Examples into records through :mod:`mlx_text2sql.prompts` only.

Every record holds the training form (``messages`` by default; ``text`` with a chat template;
``prompt`` + ``completion``) plus ``question``, ``schema`` (the schema text of the prompt),
``sql`` (gold), ``source``, ``id``, ``db_path`` (relative to the JSONL's folder, null when
none), ``table`` (WikiSQL), ``db_id`` and ``meta``. ``prompts.record_messages(record)``
rebuilds the prompt from any of them.

Pure Python: no MLX import (transformers and datasets only when their flags are used).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sqlite3
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError, InputError, ModelError, run_cli
from .example import Example, Table
from .hints import DEFAULT_MAX_HINTS, ValueIndex
from .prompting.selection import (DEFAULT_MAX_TABLES, prune, recall, select_tables,
                                  training_tables)
from .prompts import (DEFAULT_SAMPLE_ROWS, build_messages, get_template, render_chat,
                      render_schema)
from .sources import FORMATS, SourceOptions, get_source
from .sources.common import (Problems, SourceResult, connect_readonly, relative_db_path,
                             tables_in_sql)
from .splits import SPLITS, split_by_group, target_size

# Without a tokenizer, --max-tokens counts ceil(characters / CHARS_PER_TOKEN). Measured with
# the SmolLM2 tokenizer (GPT-2 style BPE that splits numbers digit by digit) on converted
# prompts + SQL: WikiSQL dev 2.52 characters per token on average (5th percentile 2.09),
# Spider dev 2.60, sql-create-context 3.49. At 2.0 the estimate over-counts for 97% of
# WikiSQL examples and all Spider / sql-create-context ones, so trimming errs towards fitting.
CHARS_PER_TOKEN = 2.0

# Where each official split file goes with --keep-splits (override with --split-map).
DEFAULT_SPLIT_MAP = {"train": "train", "train_spider": "train", "train_others": "train",
                     "dev": "valid", "valid": "valid", "validation": "valid", "test": "test"}

GOLD_TIME_LIMIT_S = 5.0
# --max-tokens for valid/test records: the prompt alone plus this much room for the answer (the
# gold SQL's own length must not shape an evaluation prompt)
ANSWER_RESERVE = 96
REPORT_NAME = "convert_report.json"

EXAMPLES = """\
examples:
  # WikiSQL folder ({split}.jsonl + {split}.tables.jsonl): pool and split by table
  python -m mlx_text2sql.convert wikisql ../shared/datasets/wikisql --out data/wikisql
  # keep the official train/dev/test files as train/valid/test
  python -m mlx_text2sql.convert wikisql path/to/WikiSQL/data --keep-splits --out data/wikisql
  # Spider, its dev set as the test split, valid carved out of train by database
  python -m mlx_text2sql.convert spider path/to/spider --keep-splits --split-map dev=test --out data/spider
  # NSQL / sql-create-context (an empty SQLite database per schema checks the gold SQL runs)
  python -m mlx_text2sql.convert nsql nsql.jsonl --out data/nsql
  python -m mlx_text2sql.convert sql-create-context sqlqa.jsonl --valid-size 200 --test-size 200 --out data/scc
  # fully templated {"text": ...} records for TinyLlama, prompts cut to 512 tokens
  python -m mlx_text2sql.convert wikisql data/sample/wikisql --chat-template zephyr --max-tokens 512 --out data/zephyr
  # through the datasets library (a Hub name, a save_to_disk folder or local data files)
  python -m mlx_text2sql.convert sql-create-context --hf-dataset b-mc2/sql-create-context --out data/scc
  # the bundled sample (this is how data/train.jsonl etc. are made)
  python -m mlx_text2sql.convert wikisql data/sample/wikisql --keep-splits --out data --db-name sample.sqlite
"""


# --------------------------------------------------------------------------- arguments

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        # the console script sets argv[0] to "mlx-text2sql convert"
        prog=sys.argv[0] if sys.argv and sys.argv[0].startswith("mlx-text2sql") else "python -m mlx_text2sql.convert",
        description="Convert a Text2SQL dataset (WikiSQL, NSQL, sql-create-context, Spider) "
                    "into train/valid/test JSONL chat records whose gold SQL runs on SQLite.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("format", metavar="FORMAT", choices=list(FORMATS),
                   help=f"dataset format: {', '.join(FORMATS)}")
    p.add_argument("input", metavar="INPUT", nargs="?",
                   help="folder or file in the dataset's original format (or use --hf-dataset)")
    p.add_argument("--out", default="data",
                   help="output folder for train/valid/test.jsonl (default: data, where the bundled "
                        "sample's converted files live)")
    g = p.add_argument_group("input")
    g.add_argument("--hf-dataset", metavar="NAME",
                   help="load records with the datasets library: a Hub name, a folder written by "
                        "save_to_disk, or local data files (.json/.jsonl/.parquet/.csv)")
    g.add_argument("--hf-split", metavar="S", help="only this split of the dataset (default: all)")
    g.add_argument("--hf-config", metavar="C", help="dataset configuration name, if it has several")
    g.add_argument("--tables", metavar="PATH",
                   help="tables file (WikiSQL *.tables.jsonl, Spider tables.json) when it is not "
                        "beside the input, or for --hf-dataset")
    g.add_argument("--databases", metavar="DIR",
                   help="Spider: folder of <db_id>/<db_id>.sqlite (default: INPUT/database)")
    g.add_argument("--limit", type=int, metavar="N", help="at most N examples from each input file")
    g.add_argument("--strict", action="store_true",
                   help="stop at the first bad record (default: skip it and report it at the end)")
    g = p.add_argument_group("output records")
    g.add_argument("--format", dest="record_format", choices=["messages", "text", "prompt-completion"],
                   help="messages (default), text (needs --chat-template or --model) or "
                        "prompt-completion")
    g.add_argument("--chat-template", metavar="NAME",
                   help="render records with a built-in template: chatml, zephyr (TinyLlama), "
                        "mistral ([INST]), llama2, plain")
    g.add_argument("--model", metavar="M",
                   help="render records with the chat template of this local Hugging Face model "
                        "folder's tokenizer (also counts tokens for --max-tokens)")
    g.add_argument("--sample-rows", type=int, default=DEFAULT_SAMPLE_ROWS, metavar="N",
                   help=f"sample rows per table in the prompt (default {DEFAULT_SAMPLE_ROWS}; 0: none)")
    g.add_argument("--value-hints", action="store_true",
                   help="add a 'Values:' line naming the database cells the question mentions and "
                        "their columns (schema and value linking for small models; generate --db "
                        "adds the same line for adapters trained on such records)")
    g.add_argument("--max-hints", type=int, default=DEFAULT_MAX_HINTS, metavar="N",
                   help=f"with --value-hints: at most N cells per question (default {DEFAULT_MAX_HINTS})")
    g.add_argument("--max-tokens", type=int, metavar="N",
                   help="fit each example (prompt + SQL) in N tokens by dropping tables the SQL does "
                        "not use, then sample rows; examples that still do not fit are dropped. "
                        f"Counted with --tokenizer/--model, else as characters / {CHARS_PER_TOKEN}")
    g.add_argument("--tokenizer", metavar="PATH", help="tokenizer (local folder) for --max-tokens")
    g.add_argument("--select-tables", action="store_true",
                   help="show each question only the tables it needs, chosen from the question and "
                        "the database alone (schema selection, as generate --db does); training "
                        "records also keep the tables their gold SQL uses")
    g.add_argument("--max-tables", type=int, default=DEFAULT_MAX_TABLES, metavar="N",
                   help=f"with --select-tables: at most N best-matching tables, plus the tables "
                        f"joining them (default {DEFAULT_MAX_TABLES})")
    g = p.add_argument_group("splits")
    g.add_argument("--valid-fraction", type=float, default=0.1, metavar="F",
                   help="fraction of examples for valid (default 0.1)")
    g.add_argument("--test-fraction", type=float, default=0.1, metavar="F",
                   help="fraction of examples for test (default 0.1)")
    g.add_argument("--valid-size", type=int, metavar="N", help="examples for valid (overrides the fraction)")
    g.add_argument("--test-size", type=int, metavar="N", help="examples for test (overrides the fraction)")
    g.add_argument("--seed", type=int, default=0, help="seed of the split and of the train order (default 0)")
    g.add_argument("--keep-splits", action="store_true",
                   help="keep the official split files (train*->train, dev/validation->valid, "
                        "test->test); an output split with no file is carved out of train by group")
    g.add_argument("--split-map", action="append", default=[], metavar="NAME=SPLIT",
                   help="with --keep-splits: send official split NAME to train, valid or test "
                        "(repeatable), e.g. dev=test")
    g = p.add_argument_group("databases")
    g.add_argument("--db-name", default=None, metavar="FILE",
                   help="WikiSQL: file name of the SQLite database written in --out (default wikisql.sqlite)")
    g.add_argument("--no-build-db", dest="build_db", action="store_false",
                   help="NSQL / sql-create-context: do not build an empty SQLite database per schema")
    g.add_argument("--no-check-gold", dest="check_gold", action="store_false",
                   help="do not execute the gold SQL to count errors and empty results")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


@dataclass
class Settings:
    """Validated command-line settings."""

    format: str
    input: str | None
    out: Path
    hf_dataset: str | None = None
    hf_split: str | None = None
    hf_config: str | None = None
    tables: str | None = None
    databases: str | None = None
    limit: int | None = None
    strict: bool = False
    record_format: str = "messages"
    chat_template: str | None = None
    model: str | None = None
    sample_rows: int = DEFAULT_SAMPLE_ROWS
    value_hints: bool = False
    max_hints: int = DEFAULT_MAX_HINTS
    max_tokens: int | None = None
    tokenizer: str | None = None
    select_tables: bool = False
    max_tables: int = DEFAULT_MAX_TABLES
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    valid_size: int | None = None
    test_size: int | None = None
    seed: int = 0
    keep_splits: bool = False
    split_map: dict[str, str] = field(default_factory=dict)
    db_name: str = "wikisql.sqlite"
    build_db: bool = True
    check_gold: bool = True
    progress: bool = True


def settings_from_args(ns: argparse.Namespace) -> Settings:
    """Check every option, raising one :class:`ConfigError` listing all problems."""
    problems = []
    if ns.input is None and ns.hf_dataset is None:
        problems.append("give INPUT (a file or folder) or --hf-dataset NAME")
    if ns.input is not None and ns.hf_dataset is not None:
        problems.append("give either INPUT or --hf-dataset, not both")
    if ns.hf_split and not ns.hf_dataset:
        problems.append("--hf-split only applies with --hf-dataset")
    if ns.limit is not None and ns.limit < 1:
        problems.append(f"--limit must be at least 1, got {ns.limit}")
    if ns.max_hints < 1:
        problems.append(f"--max-hints must be 1 or more, got {ns.max_hints}")
    if ns.sample_rows < 0:
        problems.append(f"--sample-rows must be 0 or more, got {ns.sample_rows}")
    if ns.max_tokens is not None and ns.max_tokens < 16:
        problems.append(f"--max-tokens must be at least 16, got {ns.max_tokens}")
    if ns.max_tables < 1:
        problems.append(f"--max-tables must be 1 or more, got {ns.max_tables}")
    if ns.tokenizer and ns.max_tokens is None:
        problems.append("--tokenizer is only used with --max-tokens")
    for name in ("valid_fraction", "test_fraction"):
        v = getattr(ns, name)
        if not 0.0 <= v < 1.0:
            problems.append(f"--{name.replace('_', '-')} must be in [0, 1), got {v}")
    if ns.valid_fraction + ns.test_fraction >= 1.0 and ns.valid_size is None and ns.test_size is None:
        problems.append("--valid-fraction + --test-fraction must leave something for train")
    for name in ("valid_size", "test_size"):
        v = getattr(ns, name)
        if v is not None and v < 0:
            problems.append(f"--{name.replace('_', '-')} must be 0 or more, got {v}")
    if ns.chat_template and ns.model:
        problems.append("give either --chat-template or --model (whose tokenizer has its template)")
    if ns.chat_template:
        try:
            get_template(ns.chat_template)
        except ConfigError as e:
            problems.extend(e.problems)
    record_format = ns.record_format or ("text" if (ns.chat_template or ns.model) else "messages")
    if record_format == "text" and not (ns.chat_template or ns.model):
        problems.append("--format text needs --chat-template NAME or --model PATH")
    split_map = {}
    for item in ns.split_map:
        name, sep, target = item.partition("=")
        if not sep or not name or target not in SPLITS:
            problems.append(f"--split-map {item!r}: expected NAME=train, NAME=valid or NAME=test")
        else:
            split_map[name] = target
    if split_map and not ns.keep_splits:
        problems.append("--split-map only applies with --keep-splits")
    if ns.db_name is not None and (not ns.db_name or Path(ns.db_name).name != ns.db_name):
        problems.append(f"--db-name must be a plain file name, got {ns.db_name!r}")
    if problems:
        raise ConfigError(problems)
    return Settings(
        format=ns.format, input=ns.input, out=Path(ns.out), hf_dataset=ns.hf_dataset,
        hf_split=ns.hf_split, hf_config=ns.hf_config, tables=ns.tables, databases=ns.databases,
        limit=ns.limit, strict=ns.strict, record_format=record_format,
        chat_template=ns.chat_template, model=ns.model, sample_rows=ns.sample_rows,
        value_hints=ns.value_hints, max_hints=ns.max_hints, max_tokens=ns.max_tokens, tokenizer=ns.tokenizer,
        select_tables=ns.select_tables, max_tables=ns.max_tables, valid_fraction=ns.valid_fraction,
        test_fraction=ns.test_fraction, valid_size=ns.valid_size, test_size=ns.test_size,
        seed=ns.seed, keep_splits=ns.keep_splits, split_map=split_map,
        db_name=ns.db_name or "wikisql.sqlite", build_db=ns.build_db, check_gold=ns.check_gold,
        progress=ns.progress)


# --------------------------------------------------------------------------- record forms

def load_tokenizer(path: str):
    """A Hugging Face tokenizer from a local folder (or a cached Hub id)."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, ...
        raise ModelError(f"cannot load a tokenizer from {path!r}: {e}") from None


class Renderer:
    """Turns chat messages into the record's training fields and counts their tokens.

    ``form``: "messages", "text" or "prompt-completion". The template is a registry template
    (``--chat-template``) or a tokenizer's own (``--model``); ``counter`` is a tokenizer for
    ``--max-tokens`` (None: characters / CHARS_PER_TOKEN).
    """

    def __init__(self, form: str = "messages", template: str | None = None, model_tokenizer=None,
                 counter=None):
        self.form = form
        self.template = get_template(template) if template else None
        self.model_tokenizer = model_tokenizer
        if model_tokenizer is not None and not getattr(model_tokenizer, "chat_template", None):
            raise ModelError("the model's tokenizer has no chat template; give --chat-template "
                             "NAME instead of --model")
        self.counter = counter

    @property
    def templated(self) -> bool:
        return self.template is not None or self.model_tokenizer is not None

    def chat(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        if self.model_tokenizer is not None:
            return self.model_tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return render_chat(self.template, messages, add_generation_prompt=add_generation_prompt)

    def fields(self, messages: list[dict]) -> dict:
        if self.form == "messages":
            return {"messages": messages}
        if self.form == "text":
            return {"text": self.chat(messages)}
        answer = messages[-1]["content"]
        if not self.templated:
            # The user turn alone: trainers that wrap prompt/completion in the model's chat
            # template add the roles themselves.
            return {"prompt": messages[-2]["content"], "completion": answer}
        prompt = self.chat(messages[:-1], add_generation_prompt=True)
        full = self.chat(messages)
        if full.startswith(prompt):
            return {"prompt": prompt, "completion": full[len(prompt):]}
        eos = self.template.eos if self.template else (self.model_tokenizer.eos_token or "")
        return {"prompt": prompt, "completion": answer + eos}

    def full_text(self, messages: list[dict]) -> str:
        """What the model reads for this example, for counting: the templated text, else
        the counting tokenizer's own chat template, else the bare message contents."""
        if self.templated:
            return self.chat(messages)
        if self.counter is not None and getattr(self.counter, "chat_template", None):
            return self.counter.apply_chat_template(messages, tokenize=False)
        return "\n\n".join(m["content"] for m in messages)

    def count(self, messages: list[dict]) -> int:
        text = self.full_text(messages)
        if self.counter is not None:
            return len(self.counter(text, add_special_tokens=False)["input_ids"])
        return math.ceil(len(text) / CHARS_PER_TOKEN)


# --------------------------------------------------------------------------- schema fitting

@dataclass
class Fitted:
    tables: list[Table]
    sample_rows: int
    schema: str
    dropped_tables: list[str] = field(default_factory=list)


def _without(tables: list[Table], drop: set[str]) -> list[Table]:
    """Tables not in ``drop``, with foreign keys into dropped tables removed."""
    out = []
    for t in tables:
        if t.name in drop:
            continue
        fks = [fk for fk in t.foreign_keys if fk[1] not in drop]
        out.append(t if len(fks) == len(t.foreign_keys) else replace(t, foreign_keys=fks))
    return out


def fit_schema(ex: Example, sample_rows: int, max_tokens: int | None,
               count: Callable[[list[dict]], int], hints: str | None = None, *,
               use_gold: bool = True, drop_order: list[str] | None = None) -> tuple[Fitted, bool] | None:
    """The schema to show for ``ex`` within ``max_tokens`` (prompt + SQL), and whether it was
    trimmed. Trims the schema only, never the SQL or the question: first drops tables (last
    ones first, or in ``drop_order``), then lowers the sample rows of every table down to none.
    Returns None when even that does not fit.

    ``use_gold``: never drop a table the gold SQL uses. Only training records may do that;
    evaluation records are trimmed from the question and the database alone, as at inference
    (a prompt chosen with the answer in hand would score a model on a schema it never gets):
    their budget is the prompt plus ``ANSWER_RESERVE`` tokens, whatever the gold SQL's length."""
    def tokens(tables: list[Table], rows: int) -> tuple[int, str]:
        schema = render_schema(tables, rows)
        if not use_gold:
            return count(build_messages(ex.question, schema, None, hints=hints)) + ANSWER_RESERVE, schema
        return count(build_messages(ex.question, schema, ex.sql, hints=hints)), schema

    schema = render_schema(ex.tables, sample_rows)
    if max_tokens is None:
        return Fitted(ex.tables, sample_rows, schema), False
    n, schema = tokens(ex.tables, sample_rows)
    if n <= max_tokens:
        return Fitted(ex.tables, sample_rows, schema), False
    used = tables_in_sql(ex.sql, ex.tables) if use_gold else set()
    dropped: list[str] = []
    tables = ex.tables
    order = drop_order if drop_order is not None else [t.name for t in reversed(ex.tables)]
    # at least one table stays
    for name in order[:-1] if not used else order:
        if name in used or name in dropped:
            continue
        dropped.append(name)
        tables = _without(ex.tables, set(dropped))
        n, schema = tokens(tables, sample_rows)
        if n <= max_tokens:
            return Fitted(tables, sample_rows, schema, dropped), True
    for rows in range(sample_rows - 1, -1, -1):
        n, schema = tokens(tables, rows)
        if n <= max_tokens:
            return Fitted(tables, rows, schema, dropped), True
    return None


# --------------------------------------------------------------------------- gold check

@dataclass
class GoldStats:
    checked: int = 0
    errors: int = 0
    empty: int = 0
    with_data: int = 0          # checked against a database that has rows
    with_data_nonempty: int = 0
    error_examples: list[str] = field(default_factory=list)


def _has_value(rows: list[tuple]) -> bool:
    return any(v is not None for row in rows for v in row)


def check_gold(examples: list[Example], result: SourceResult, stats: GoldStats,
               progress: bool = True, time_limit: float = GOLD_TIME_LIMIT_S) -> None:
    """Run every gold query on its database (read-only, time-limited): sets
    ``meta["gold_error"]`` when it fails and ``meta["gold_empty"]`` (no row with a non-NULL
    value) for databases with data."""
    from tqdm import tqdm

    by_db: dict[str, list[Example]] = {}
    for ex in examples:
        if ex.db_path:
            by_db.setdefault(ex.db_path, []).append(ex)
    bar = tqdm(total=sum(map(len, by_db.values())), desc="checking gold SQL", unit=" q",
               disable=not progress, leave=False, dynamic_ncols=True)
    for db, exs in by_db.items():
        try:
            conn = connect_readonly(result.staging.current(db))
        except sqlite3.Error as e:
            for ex in exs:
                ex.meta["gold_error"] = f"cannot open database: {e}"
            stats.checked += len(exs)
            stats.errors += len(exs)
            bar.update(len(exs))
            continue
        deadline = [0.0]
        conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline[0] else 0, 10_000)
        try:
            for ex in exs:
                stats.checked += 1
                has_rows = bool(ex.meta.get("has_rows"))
                deadline[0] = time.monotonic() + time_limit
                try:
                    rows = conn.execute(ex.sql).fetchmany(1000)
                    ex.meta.pop("gold_error", None)
                    if has_rows:
                        stats.with_data += 1
                        empty = not _has_value(rows)
                        ex.meta["gold_empty"] = empty
                        stats.empty += empty
                        stats.with_data_nonempty += not empty
                except sqlite3.Error as e:
                    msg = str(e)
                    if msg == "interrupted":
                        msg = f"took longer than {time_limit:g} s"
                    ex.meta["gold_error"] = msg
                    stats.errors += 1
                    if len(stats.error_examples) < 10:
                        stats.error_examples.append(f"{ex.id}: {msg}: {ex.sql}")
                bar.update(1)
        finally:
            conn.close()
    bar.close()


# --------------------------------------------------------------------------- loading

def load_hf_splits(name: str, split: str | None, config: str | None) -> dict[str, Any]:
    """Records of a dataset through the ``datasets`` library, as ``{split: Dataset}``.

    ``name`` is a folder written by ``save_to_disk``, local data files (a file or a folder of
    .json/.jsonl/.parquet/.csv), or a Hub dataset name (needs network or a cache).
    """
    try:
        import datasets
    except ImportError:
        raise ConfigError("--hf-dataset needs the 'datasets' package: pip install datasets") from None
    path = Path(name)
    try:
        if path.is_dir() and any((path / f).is_file() for f in
                                 ("dataset_info.json", "state.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(str(path))
        elif path.exists():
            files = [path] if path.is_file() else sorted(
                p for p in path.rglob("*") if p.suffix.lower() in (".json", ".jsonl", ".parquet", ".csv"))
            if not files:
                raise InputError("no .json/.jsonl/.parquet/.csv data files here", str(path))
            kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}[files[0].suffix.lower()]
            ds = datasets.load_dataset(kind, data_files=[str(f) for f in files])
        else:
            ds = datasets.load_dataset(name, config) if config else datasets.load_dataset(name)
    except (InputError, ConfigError):
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds (network, format, ...)
        raise InputError(f"cannot load the dataset: {e}", name) from None
    if isinstance(ds, datasets.DatasetDict):
        splits = dict(ds)
    else:
        splits = {split or "train": ds}
        split = None
    if split is not None:
        if split not in splits:
            raise ConfigError(f"dataset {name!r} has no split {split!r}; it has {', '.join(splits)}")
        splits = {split: splits[split]}
    return splits


# --------------------------------------------------------------------------- splitting

def assign_splits(result: SourceResult, s: Settings, notes: list[str]) -> dict[str, list[Example]]:
    """Examples per output split: pooled and split by group, or (``--keep-splits``) the
    official files kept, an output split with no file carved out of train by group."""
    out: dict[str, list[Example]] = {k: [] for k in SPLITS}
    if s.keep_splits:
        mapping = {**DEFAULT_SPLIT_MAP, **s.split_map}
        unknown = [name for name in result.splits if name not in mapping]
        if unknown:
            raise ConfigError([f"split {n!r} has no output split: add --split-map {n}=train "
                               "(or valid, test)" for n in unknown])
        for name, exs in result.splits.items():
            out[mapping[name]].extend(exs)
        carve = {k: not out[k] for k in ("valid", "test")}
        # Tables shared by two official splits defeat group splitting; say so.
        groups = {k: {e.split_key for e in out[k]} for k in SPLITS}
        shared = (groups["train"] & (groups["valid"] | groups["test"])) | (groups["valid"] & groups["test"])
        if shared:
            notes.append(f"{len(shared)} groups (tables/databases) appear in more than one official split")
        if not any(carve.values()) or not out["train"]:
            return out
        pool = out["train"]
    else:
        pool = [ex for exs in result.splits.values() for ex in exs]
        carve = {"valid": True, "test": True}
    total = len(pool)
    valid_n = target_size(total, s.valid_fraction, s.valid_size) if carve["valid"] else 0
    test_n = target_size(total, s.test_fraction, s.test_size) if carve["test"] else 0
    idx = split_by_group([ex.split_key for ex in pool], valid=valid_n, test=test_n, seed=s.seed)
    out["train"] = [pool[i] for i in idx["train"]]
    for k in ("valid", "test"):
        if carve[k]:
            out[k] = [pool[i] for i in idx[k]]
    return out


# --------------------------------------------------------------------------- records

def make_record(ex: Example, fitted: Fitted, renderer: Renderer, out_dir: Path,
                hints: str | None = None) -> dict:
    """One JSONL record: the training form first, then the fields every stage reads."""
    messages = build_messages(ex.question, fitted.schema, ex.sql, hints=hints)
    meta = dict(ex.meta)
    rec = renderer.fields(messages)
    rec.update({
        "question": ex.question,
        "schema": fitted.schema,
        **({"hints": hints} if hints is not None else {}),
        "sql": ex.sql,
        "source": ex.source,
        "id": ex.id,
        "db_path": relative_db_path(ex.db_path, out_dir),
        "table": ex.table,
        "db_id": ex.db_id,
        "meta": meta,
    })
    return rec


@dataclass
class Summary:
    counts: dict[str, int] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)
    skipped: list[InputError] = field(default_factory=list)
    trimmed: int = 0
    too_long: list[str] = field(default_factory=list)
    gold: GoldStats = field(default_factory=GoldStats)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # split -> [examples selected, examples whose gold tables all survived the selection]
    selection: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self, s: Settings) -> dict:
        return {
            "format": s.format,
            "input": s.input or s.hf_dataset,
            "splits": self.counts,
            "groups": self.groups,
            "skipped": len(self.skipped),
            "skipped_records": [str(e) for e in self.skipped],
            "trimmed": self.trimmed,
            "too_long": len(self.too_long),
            "too_long_ids": self.too_long,
            "gold": {"checked": self.gold.checked, "errors": self.gold.errors,
                     "checked_on_data": self.gold.with_data,
                     "non_empty": self.gold.with_data_nonempty, "empty": self.gold.empty},
            "notes": self.notes,
            "selection_recall": {k: {"examples": n, "gold_tables_kept": ok,
                                     "recall": round(ok / n, 4) if n else None}
                                 for k, (n, ok) in self.selection.items()},
            "settings": {"select_tables": s.select_tables, "max_tables": s.max_tables,"sample_rows": s.sample_rows, "value_hints": s.value_hints,
                         "max_hints": s.max_hints, "max_tokens": s.max_tokens,
                         "record_format": s.record_format, "chat_template": s.chat_template,
                         "model": s.model, "seed": s.seed, "keep_splits": s.keep_splits,
                         "valid_fraction": s.valid_fraction, "test_fraction": s.test_fraction,
                         "valid_size": s.valid_size, "test_size": s.test_size, "limit": s.limit},
        }


def _record(ex: Example, split: str, s: Settings, renderer: Renderer, hint_text, selected,
            summary: Summary) -> dict | None:
    """One example's record: schema selection, value hints, fitting (None: does not fit).

    Only a training record's prompt may depend on its gold SQL (its tables are added to the
    selection, and fitting keeps them); valid and test prompts come from the question and the
    database alone, exactly as ``generate`` builds them."""
    train = split == "train"
    selection = None
    if s.select_tables and len(ex.tables) > 1:
        selection = selected(ex)
        gold = tables_in_sql(ex.sql, ex.tables)
        keep = training_tables(selection, ex.tables, gold) if train else selection.tables
        summary.selection.setdefault(split, [0, 0])
        summary.selection[split][0] += 1
        summary.selection[split][1] += recall(selection.tables, gold)
        ex = replace(ex, tables=prune(ex.tables, keep), meta={**ex.meta, "tables_shown": len(keep)})
    drop_order = None
    if selection is not None and selection.scores:
        drop_order = sorted((t.name for t in ex.tables), key=lambda n: selection.scores.get(n, 0.0))
    hints = hint_text(ex, ex.tables) if s.value_hints else None
    fit = fit_schema(ex, s.sample_rows, s.max_tokens, renderer.count, hints,
                     use_gold=train, drop_order=drop_order)
    if fit is None:
        summary.too_long.append(ex.id or "?")
        return None
    fitted, trimmed = fit
    if s.value_hints and fitted.dropped_tables:
        hints = hint_text(ex, fitted.tables)
    rec = make_record(ex, fitted, renderer, s.out, hints)
    if trimmed:
        summary.trimmed += 1
        rec["meta"]["trimmed"] = {"dropped_tables": fitted.dropped_tables,
                                  "sample_rows": fitted.sample_rows}
    return rec


def convert(s: Settings) -> Summary:
    """Run a conversion with validated settings; returns what happened (also written to
    ``out/convert_report.json``). Raises :class:`InputError` on the first bad record when
    ``s.strict``; output files are only replaced once everything succeeded."""
    start = time.perf_counter()
    source = get_source(s.format)
    options = SourceOptions(out_dir=str(s.out), sample_rows=s.sample_rows, limit=s.limit,
                            db_name=s.db_name, build_db=s.build_db, tables=s.tables,
                            databases=s.databases, progress=s.progress)
    problems = Problems(strict=s.strict)
    model_tok = load_tokenizer(s.model) if s.model else None
    counter = None
    if s.max_tokens is not None:
        counter = load_tokenizer(s.tokenizer) if s.tokenizer else model_tok
    renderer = Renderer(s.record_format, s.chat_template, model_tok, counter)

    if s.hf_dataset:
        splits = load_hf_splits(s.hf_dataset, s.hf_split, s.hf_config)
        result = source.read_hf(splits, options, problems, name=s.hf_dataset)
    else:
        result = source.read(s.input, options, problems)
    summary = Summary(skipped=list(problems.items), notes=list(result.notes))
    indexes: dict[str, ValueIndex] = {}

    def index(ex: Example) -> ValueIndex | None:
        if not ex.db_path:
            return None
        if ex.db_path not in indexes:
            indexes[ex.db_path] = ValueIndex(result.staging.current(ex.db_path))
        return indexes[ex.db_path]

    def hint_text(ex: Example, tables: list[Table]) -> str:
        """The example's value hints, read from its (staged) database; "" without one."""
        vi = index(ex)
        return vi.hint_text(ex.question, [t.name for t in tables], s.max_hints) if vi else ""

    def selected(ex: Example):
        """Schema selection for ``ex`` from its question and database (no gold query)."""
        vi = index(ex)
        cells = [h.table for h in vi.hints(ex.question, [t.name for t in ex.tables], s.max_hints)] if vi else []
        return select_tables(ex.question, ex.tables, cells, max_tables=s.max_tables)

    try:
        split_examples = assign_splits(result, s, summary.notes)
        all_examples = [ex for exs in split_examples.values() for ex in exs]
        if s.check_gold:
            check_gold(all_examples, result, summary.gold, s.progress)
        records: dict[str, list[dict]] = {}
        count = renderer.count

        from tqdm import tqdm

        bar = tqdm(total=len(all_examples), desc="writing records", unit=" ex", leave=False,
                   disable=not s.progress, dynamic_ncols=True)
        for split in SPLITS:
            recs = []
            for ex in split_examples[split]:
                bar.update(1)
                rec = _record(ex, split, s, renderer, hint_text, selected, summary)
                if rec is not None:
                    recs.append(rec)
            if split == "train":
                random.Random(s.seed).shuffle(recs)
            records[split] = recs
            summary.counts[split] = len(recs)
            summary.groups[split] = len({ex.split_key for ex in split_examples[split]})
        bar.close()
        # Everything is written beside its final name and renamed at the end, databases
        # included: a failure leaves the previous outputs as they were.
        for split, recs in records.items():
            _write_lines(result.staging.path_for(s.out / f"{split}.jsonl"), map(json_line, recs))
        summary.seconds = time.perf_counter() - start
        _write_lines(result.staging.path_for(s.out / REPORT_NAME),
                     [json.dumps(summary.to_dict(s), indent=2, ensure_ascii=False)])
        result.staging.commit()
    except BaseException:
        result.staging.rollback()
        raise
    finally:
        for index in indexes.values():
            index.close()
    return summary


# Line separators that json.dumps(ensure_ascii=False) leaves raw but str.splitlines() and
# some JSONL readers split on: escaped, so one record is always one line.
_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def json_line(record: dict) -> str:
    """One record as one JSONL line (UTF-8 text kept readable)."""
    return json.dumps(record, ensure_ascii=False).translate(_LINE_BREAKS)


def _write_lines(path: Path, lines) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def print_summary(s: Settings, summary: Summary, file=None) -> None:
    file = file or sys.stdout
    unit = {"wikisql": "tables", "spider": "databases"}.get(s.format, "schemas")
    print(f"{s.format} -> {s.out}", file=file)
    for split in SPLITS:
        print(f"  {split:<5} {summary.counts.get(split, 0):>8} examples  "
              f"({summary.groups.get(split, 0)} {unit})", file=file)
    n_skip = len(summary.skipped)
    print(f"  skipped {n_skip} bad records", file=file)
    for e in summary.skipped[:20]:
        print(f"    {e}", file=file)
    if n_skip > 20:
        print(f"    ... {n_skip - 20} more in {s.out / REPORT_NAME}", file=file)
    if s.max_tokens is not None:
        print(f"  trimmed {summary.trimmed} schemas to fit {s.max_tokens} tokens; dropped "
              f"{len(summary.too_long)} examples that did not fit even so", file=file)
    for split, (n, ok) in summary.selection.items():
        print(f"  schema selection ({split}): the gold SQL's tables all shown for {ok}/{n} "
              f"({100.0 * ok / max(n, 1):.1f}%) multi-table questions"
              + (" (the gold SQL's tables are added to training prompts)" if split == "train" else ""),
              file=file)
    g = summary.gold
    if g.checked:
        line = f"  gold SQL: {g.checked} executed, {g.errors} failed"
        if g.with_data:
            pct = 100.0 * g.with_data_nonempty / g.with_data
            line += f"; {g.with_data_nonempty}/{g.with_data} ({pct:.2f}%) non-empty on data"
        print(line, file=file)
        for e in g.error_examples[:5]:
            print(f"    {e}", file=file)
    for note in summary.notes:
        print(f"  {note}", file=file)
    print(f"  done in {summary.seconds:.1f} s", file=file)


def _main(argv: list[str] | None) -> int:
    try:
        ns = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse already printed
        return int(e.code or 0)
    s = settings_from_args(ns)
    summary = convert(s)
    print_summary(s, summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the exit code (typed errors print one line on stderr)."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
