"""Small SQLite database files for tests, written from Python rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def make_sqlite(path: Path, *tables: tuple[str, str, list[tuple]]) -> Path:
    """Write ``path`` with one table per ``(name, column definitions, rows)``; returns ``path``."""
    con = sqlite3.connect(path)
    for name, columns, rows in tables:
        con.execute(f'CREATE TABLE "{name}" ({columns})')
        if rows:
            con.executemany(f'INSERT INTO "{name}" VALUES ({", ".join("?" * len(rows[0]))})', rows)
    con.commit()
    con.close()
    return path
