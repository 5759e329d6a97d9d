"""Prompts for JSONL records of questions (``generate --input``), each with where it runs.

A record is either a converted one (``messages``: its prompt as trained, the answer dropped)
or a question with a schema: its own ``schema`` text, its ``db_path`` (relative to the JSONL's
folder, as ``convert`` writes it; ``table`` / ``tables`` name the tables to show), or the
caller's default database or schema text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import InputError
from .questions import PromptBuilder


@dataclass
class Job:
    """One record: the record itself, its prompt, the database it may run on, and
    ``where`` (``file:line``) for messages."""

    record: dict
    messages: list[dict]
    db_path: Path | None
    where: str

    @property
    def question(self) -> str:
        q = self.record.get("question")
        return str(q or "")

    @property
    def schema(self) -> str | None:
        """The record's own schema text (for running a query when it has no database)."""
        s = self.record.get("schema")
        return s if isinstance(s, str) else None


def _record_db(rec: dict, path: Path, default_db: Path | None) -> Path | None:
    if isinstance(rec.get("db_path"), str) and rec["db_path"]:
        db = Path(rec["db_path"])
        return db if db.is_absolute() else path.parent / db  # relative to the JSONL's folder
    return default_db


def _converted_messages(rec: dict, path: Path, lineno: int) -> list[dict]:
    from ..prompts import record_messages

    try:
        msgs = record_messages(rec)
    except (KeyError, TypeError, AttributeError) as e:
        raise InputError(f"malformed 'messages' ({e})", str(path), lineno) from None
    if not msgs or not isinstance(msgs[-1], dict) or msgs[-1].get("role") != "user":
        raise InputError("'messages' must end with the user turn (or a user turn + the assistant's answer)",
                         str(path), lineno)
    return msgs


def _question_messages(rec: dict, path: Path, lineno: int, db: Path | None, builder: PromptBuilder, *,
                       default_tables: Sequence[str] | None, default_schema: str | None) -> list[dict]:
    from ..prompts import build_messages

    question = rec.get("question")
    if not isinstance(question, str) or not question.strip():
        raise InputError("record needs a non-empty 'question' (or 'messages')", str(path), lineno)
    schema = rec.get("schema")
    hints = rec.get("hints") if isinstance(rec.get("hints"), str) else None
    if isinstance(schema, str) and schema.strip():
        schema = schema.strip()
    elif db is not None:
        tables = rec.get("tables") or ([rec["table"]] if rec.get("table") else None)
        if tables is None and not rec.get("db_path"):
            tables = default_tables  # the caller's database: the caller's table choice
        try:
            chosen = builder.tables_for(db, tables, question)
            schema = builder.schema_text(db, chosen)
            if hints is None and builder.settings.value_hints:
                hints = builder.hints(db, chosen, question)
        except InputError as e:
            raise InputError(f"record's database: {e}", str(path), lineno) from None
    elif default_schema is not None:
        schema = default_schema
    else:
        raise InputError("record has no 'schema' or 'db_path', and no --schema/--db was given",
                         str(path), lineno)
    return build_messages(question, schema, system=builder.settings.system_prompt, hints=hints)


def read_input(path: str | Path, builder: PromptBuilder, *, default_db: Path | None = None,
               default_tables: Sequence[str] | None = None, default_schema: str | None = None) -> list[Job]:
    """Every record of the JSONL file ``path`` as a :class:`Job`; InputError names the file
    and line of the first bad record (and a file without records)."""
    from ..jsonl import iter_jsonl

    path = Path(path)
    jobs = []
    for lineno, rec in iter_jsonl(path):
        db = _record_db(rec, path, default_db)
        if "messages" in rec:
            msgs = _converted_messages(rec, path, lineno)
        else:
            msgs = _question_messages(rec, path, lineno, db, builder, default_tables=default_tables,
                                      default_schema=default_schema)
        jobs.append(Job(rec, msgs, db, f"{path}:{lineno}"))
    if not jobs:
        raise InputError("no records", str(path))
    return jobs
