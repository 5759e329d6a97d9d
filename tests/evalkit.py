"""Helpers for evaluate / generate tests whose model's part is scripted."""

from __future__ import annotations

import json
from pathlib import Path

from mlx_text2sql.prompts import build_messages


def scripted_replies(monkeypatch, reply: str) -> None:
    """Every prompt the engine decodes is answered ``reply`` (the model's part of a test)."""
    from mlx_text2sql.engine import Result, SQLGenerator

    def replies(self, prompts, **kw):
        return [Result(text=reply, sql=reply, n_prompt_tokens=1, n_tokens=9, seconds=0.1,
                       finish_reason="stop") for _ in prompts]

    monkeypatch.setattr(SQLGenerator, "generate", replies)


def one_record(folder: Path, question: str, schema: str, gold: str, **fields) -> Path:
    """``folder/test.jsonl`` holding one converted record (``fields``: source, id, db_path, ...)."""
    rec = {"messages": build_messages(question, schema, gold), "question": question, "schema": schema,
           "sql": gold, **fields}
    path = Path(folder) / "test.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    return path
