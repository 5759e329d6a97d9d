"""The chat prompt for a question over a schema or a live SQLite file, as in training.

A model is asked the way it was trained: :class:`PromptSettings` holds the settings a prompt
depends on (sample rows per table, the system prompt, value hints), read from the adapter's
``adapter_config.json`` or from the note ``fuse`` leaves in a fused model folder
(:meth:`PromptSettings.trained`). :class:`PromptBuilder` turns a question and CREATE TABLE
text or a database into :func:`mlx_text2sql.prompts.build_messages` messages: a database's
schema text is read once per (file, tables, sample rows), the tables a question is about are
picked when none are named (:func:`mlx_text2sql.schema_db.select_tables`), and with value hints
the ``Values:`` line is looked up in the database's cells.

Pure Python (sqlite3, sqlglot): no model, no MLX; every check here runs before a model loads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError, InputError
from ..prompts import DEFAULT_SAMPLE_ROWS, SYSTEM_PROMPT, build_messages

FUSE_NOTE = "mlx_text2sql_fuse.json"  # written by fuse next to the fused weights


def trained_prompt_settings(model: str | os.PathLike | None = None,
                            adapter_path: str | os.PathLike | None = None) -> dict:
    """The raw ``prompt`` settings a model was trained with: from the adapter's config, or
    from the note ``fuse`` leaves in a fused model folder; {} when neither says."""
    prompt = None
    if adapter_path:
        from ..models.adapters import read_adapter_config

        prompt = read_adapter_config(adapter_path).get("prompt")
    elif model and (Path(model) / FUSE_NOTE).is_file():
        try:
            info = json.loads((Path(model) / FUSE_NOTE).read_text(encoding="utf-8"))
            prompt = info.get("prompt") if isinstance(info, dict) else None
        except (OSError, ValueError):
            prompt = None  # a damaged note only costs the defaults
    return prompt if isinstance(prompt, dict) else {}


@dataclass(frozen=True)
class PromptSettings:
    """What a prompt depends on besides the question and the schema.

    sample_rows:   rows shown per table when the schema is read from a database.
    system_prompt: the system turn.
    value_hints:   add the ``Values:`` line (cells the question mentions) for databases.
    max_hints:     at most this many values on that line (None: the hints module's default).
    """

    sample_rows: int = DEFAULT_SAMPLE_ROWS
    system_prompt: str = SYSTEM_PROMPT
    value_hints: bool = False
    max_hints: int | None = None

    @classmethod
    def trained(cls, model: str | os.PathLike | None = None,
                adapter_path: str | os.PathLike | None = None) -> "PromptSettings":
        """The settings the adapter (or fused model) was trained with; defaults elsewhere."""
        raw = trained_prompt_settings(model, adapter_path)
        rows = raw.get("sample_rows")
        system = raw.get("system_prompt")
        max_hints = raw.get("max_hints")
        return cls(sample_rows=rows if isinstance(rows, int) else DEFAULT_SAMPLE_ROWS,
                   system_prompt=system if isinstance(system, str) else SYSTEM_PROMPT,
                   value_hints=bool(raw.get("value_hints")),
                   max_hints=max_hints if isinstance(max_hints, int) else None)


def parse_tables(value: str | None) -> list[str] | None:
    """A ``--tables`` value: None (or "auto") = pick per question, "all" = [], else the names."""
    if value is None or value.strip().lower() == "auto":
        return None
    if value.strip().lower() == "all":
        return []
    names = [t.strip() for t in value.split(",") if t.strip()]
    if not names:
        raise ConfigError("--tables names no table (give names, 'all' or 'auto')")
    return names


def read_schema_file(path: str | os.PathLike) -> str:
    """The text of a schema file (InputError when it is missing or not UTF-8)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("schema file not found", str(path))
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text ({e.reason})", str(path)) from None


def _file_key(path: Path) -> tuple:
    """A database's identity: its resolved path and, so that a changed file is read again,
    its size and modification time."""
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


class PromptBuilder:
    """Prompts for questions over CREATE TABLE text or SQLite files, with caches.

    settings:  the :class:`PromptSettings` (each call may override sample rows and hints).
    on_tables: called as ``on_tables(db_path, why)`` the first time the tables of a database
               are picked for a question in a given way (``why`` is a one-line reason).
    """

    def __init__(self, settings: PromptSettings | None = None, *,
                 on_tables: Callable[[Path, str], None] | None = None):
        self.settings = settings or PromptSettings()
        self.on_tables = on_tables
        self._schemas: dict[tuple, str] = {}
        self._checked: dict[tuple[str, str], str] = {}
        self._indexes: dict[str, Any] = {}
        self._announced: set[tuple[str, str]] = set()

    # ----------------------------------------------------------------- checks

    def check_schema(self, text: str, where: str = "schema") -> str:
        """``text`` stripped, once it is known to be CREATE TABLE statements (InputError
        naming ``where`` and the statement otherwise); each text is parsed once."""
        key = (where, text)
        if key not in self._checked:
            from ..schema_db import validate_schema_text

            validate_schema_text(text, where)
            self._checked[key] = text.strip()
        return self._checked[key]

    @staticmethod
    def check_database(db: str | os.PathLike, tables: Sequence[str] | None = None) -> None:
        """Fail now (InputError) on a missing or broken file, or a table it does not hold."""
        from ..schema_db import list_tables, read_tables

        if tables:
            read_tables(db, list(tables), 0)
        else:
            list_tables(db)

    # ----------------------------------------------------------------- databases

    def tables_for(self, db: str | os.PathLike, tables: Sequence[str] | None, question: str) -> list[str]:
        """The tables to show: ``tables`` when given ([] = all), else those ``question`` is
        about (:func:`~mlx_text2sql.schema_db.select_tables`)."""
        if tables is not None:
            return list(tables)
        from ..schema_db import select_tables

        chosen, why = select_tables(db, question)
        key = (str(db), why)
        if key not in self._announced:
            self._announced.add(key)
            if self.on_tables is not None:
                self.on_tables(Path(db), why)
        return chosen

    def schema_text(self, db: str | os.PathLike, tables: Sequence[str], sample_rows: int | None = None) -> str:
        """The schema text of ``tables`` of the database ([] = all), read once per file state."""
        from ..schema_db import schema_from_db

        path = Path(db)
        rows = self.settings.sample_rows if sample_rows is None else sample_rows
        key = (_file_key(path) if path.is_file() else (str(path),), tuple(tables), rows)
        if key not in self._schemas:
            self._schemas[key] = schema_from_db(path, list(tables) or None, rows)
        return self._schemas[key]

    def hints(self, db: str | os.PathLike, tables: Sequence[str], question: str,
              max_hints: int | None = None) -> str:
        """The value hints line for ``question`` over ``tables`` of the database ([] = all)."""
        from ..hints import DEFAULT_MAX_HINTS, ValueIndex
        from ..schema_db import list_tables, read_tables

        path = Path(db)
        names = [t.name for t in read_tables(path, list(tables), 0)] if tables else list_tables(path)
        key = str(path.resolve())
        if key not in self._indexes:
            self._indexes[key] = ValueIndex(path)
        limit = max_hints or self.settings.max_hints or DEFAULT_MAX_HINTS
        return self._indexes[key].hint_text(question, names, limit)

    # ----------------------------------------------------------------- prompts

    def messages(self, question: str, *, db: str | os.PathLike | None = None, schema: str | None = None,
                 tables: Sequence[str] | None = None, sample_rows: int | None = None,
                 value_hints: bool | None = None, select_schema: bool | None = None,
                 hints: str | None = None, where: str = "schema") -> list[dict[str, str]]:
        """The chat prompt for ``question`` over ``schema`` (CREATE TABLE text) or ``db``.

        tables:        with ``db``: the tables to show ([] = all); None: ``select_schema``
                       decides (None/True: the tables the question is about; False: all).
        sample_rows, value_hints: override the settings for this prompt (None: as trained).
        hints:         a ready ``Values:`` line (a record's own), used instead of looking one up.
        Raises InputError (bad schema text, missing database, unknown table) or ConfigError
        (no schema source, or two).
        """
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty: give the question text")
        if db is not None and schema is not None:
            raise ConfigError("give a database or a schema, not both")
        if schema is not None:
            text = self.check_schema(schema, where)
            return build_messages(question, text, system=self.settings.system_prompt, hints=hints)
        if db is None:
            raise ConfigError("no schema: give a database (a SQLite file) or CREATE TABLE statements")
        if tables is None and select_schema is False:
            tables = []
        chosen = self.tables_for(db, tables, question)
        text = self.schema_text(db, chosen, sample_rows)
        use_hints = self.settings.value_hints if value_hints is None else value_hints
        if hints is None and use_hints:
            hints = self.hints(db, chosen, question)
        return build_messages(question, text, system=self.settings.system_prompt, hints=hints)

    def close(self) -> None:
        """Close the databases opened for value hints."""
        for index in self._indexes.values():
            index.close()
        self._indexes.clear()
