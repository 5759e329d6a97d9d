"""The databases a server answers questions over, named on its command line.

Clients only ever send a database's *name*; the path behind it comes from ``serve --db``, so no
client-supplied path is ever opened. Schema summaries (tables, columns, types, keys, row counts)
are read once per file version (path, size, mtime) and kept.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Database:
    name: str
    path: Path


def parse_db_arg(value: str) -> tuple[str | None, str]:
    """``--db`` values: ``FILE`` or ``NAME=FILE``."""
    name, sep, path = value.partition("=")
    if sep and _NAME.match(name) and path:
        return name, path
    return None, value


class DatabaseRegistry:
    """Name -> SQLite file, in the order given; names default to the file's stem (``-2``,
    ``-3``... when two stems are the same)."""

    def __init__(self, entries: list[tuple[str | None, str | os.PathLike]]):
        from ..schema_db import list_tables

        self._by_name: dict[str, Database] = {}
        problems = []
        for name, path in entries:
            path = Path(path).expanduser().resolve()
            if name is None:
                base = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem) or "db"
                name, k = base, 2
                while name in self._by_name:
                    name, k = f"{base}-{k}", k + 1
            elif name in self._by_name:
                problems.append(f"--db: the name {name!r} is given twice")
                continue
            try:
                if not list_tables(path):
                    problems.append(f"--db {path}: the database holds no tables")
                    continue
            except InputError as e:
                problems.append(f"--db {e}")
                continue
            self._by_name[name] = Database(name, path)
        if problems:
            from ..errors import ConfigError

            raise ConfigError(problems)
        if not self._by_name:
            from ..errors import ConfigError

            raise ConfigError("no database: give --db FILE (or NAME=FILE), once per database")
        self._summaries: dict[str, tuple[tuple, dict]] = {}
        self._lock = threading.Lock()

    def __iter__(self):
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    def get(self, name: str) -> Database | None:
        return self._by_name.get(name)

    def summary(self, name: str) -> dict:
        """``{"name", "tables": [{"name", "columns": [{"name", "type", "primary_key"}],
        "primary_key", "foreign_keys": [{"column", "table", "references"}], "rows"}]}``."""
        db = self._by_name[name]
        st = db.path.stat()
        version = (st.st_size, st.st_mtime_ns, st.st_ino)
        with self._lock:
            cached = self._summaries.get(name)
            if cached is not None and cached[0] == version:
                return cached[1]
        summary = _read_summary(db)
        with self._lock:
            self._summaries[name] = (version, summary)
        return summary


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _read_summary(db: Database) -> dict:
    from ..errors import SQLExecutionError
    from ..schema_db import read_tables
    from ..sqlexec import execute

    tables = []
    for t in read_tables(db.path, None, 0):
        try:
            rows = execute(db.path, f"SELECT COUNT(*) FROM {_quote(t.name)}", timeout_s=10.0).rows[0][0]
        except SQLExecutionError:
            rows = None  # a count that takes too long is left out, not guessed
        pk = set(t.primary_key)
        tables.append({
            "name": t.name,
            "columns": [{"name": c.name, "type": c.type, "primary_key": c.name in pk} for c in t.columns],
            "primary_key": list(t.primary_key),
            "foreign_keys": [{"column": c, "table": rt, "references": rc} for c, rt, rc in t.foreign_keys],
            "rows": rows,
        })
    return {"name": db.name, "tables": tables}
