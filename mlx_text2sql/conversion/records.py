"""Examples -> JSONL records: the training form (messages, templated text or prompt +
completion), token counting for ``--max-tokens``, and one record per line.

Pure Python: no MLX import (transformers only for ``--model`` / ``--tokenizer``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..errors import ModelError
from ..example import Example
from ..prompts import build_messages, get_template, render_chat
from ..sources.databases import relative_db_path
from .fitting import Fitted

# Without a tokenizer, --max-tokens counts ceil(characters / CHARS_PER_TOKEN). Measured with
# the SmolLM2 tokenizer (GPT-2 style BPE that splits numbers digit by digit) on converted
# prompts + SQL: WikiSQL dev 2.52 characters per token on average (5th percentile 2.09),
# Spider dev 2.60, sql-create-context 3.49. At 2.0 the estimate over-counts for 97% of
# WikiSQL examples and all Spider / sql-create-context ones, so trimming errs towards fitting.
CHARS_PER_TOKEN = 2.0


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


# Line separators that json.dumps(ensure_ascii=False) leaves raw but str.splitlines() and
# some JSONL readers split on: escaped, so one record is always one line.
_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def json_line(record: dict) -> str:
    """One record as one JSONL line (UTF-8 text kept readable)."""
    return json.dumps(record, ensure_ascii=False).translate(_LINE_BREAKS)


def write_lines(path: Path, lines) -> None:
    """Write ``lines`` to ``path``, one per line, and flush them to disk."""
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
