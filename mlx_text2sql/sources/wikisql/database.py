"""The one SQLite file holding every WikiSQL table the examples use, and how a stored one is
recognised as up to date.

Pure Python: no MLX import.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Iterable

from ...prompts import quote_ident
from .tables import WikiTable

# Identifies databases this module wrote (PRAGMA application_id), and changes whenever the
# way tables are built changes so old files are rebuilt instead of reused.
_APPLICATION_ID = 0x74327351  # "t2sQ"
_BUILDER_VERSION = 1


def tables_fingerprint(tables: Iterable[WikiTable]) -> str:
    h = hashlib.sha256(f"wikisql-db-v{_BUILDER_VERSION}".encode())
    for t in tables:
        h.update(json.dumps([t.id, t.name, t.columns, t.types, t.rows], ensure_ascii=False,
                            separators=(",", ":")).encode("utf-8"))
    return h.hexdigest()


def _fingerprint_version(fingerprint: str) -> int:
    return int(fingerprint[:7], 16)  # 28 bits: fits PRAGMA user_version (a signed 32-bit int)


def database_is_current(path: Path, fingerprint: str, n_tables: int) -> bool:
    """True when ``path`` is a database this module built from exactly these tables."""
    if not path.is_file():
        return False
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            app = conn.execute("PRAGMA application_id").fetchone()[0]
            ver = conn.execute("PRAGMA user_version").fetchone()[0]
            count = conn.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    return app == _APPLICATION_ID and ver == _fingerprint_version(fingerprint) and count == n_tables


def create_table_sql(table: WikiTable) -> str:
    cols = []
    for name, t in zip(table.columns, table.types):
        decl = "TEXT COLLATE NOCASE" if t == "text" else "REAL"
        cols.append(f"{quote_ident(name)} {decl}")
    return f"CREATE TABLE {quote_ident(table.name)} ({', '.join(cols)})"


def build_database(path: str | Path, tables: list[WikiTable], fingerprint: str | None = None) -> None:
    """Write every table (all rows) into a new SQLite file at ``path``."""
    fingerprint = fingerprint or tables_fingerprint(tables)
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute(f"PRAGMA application_id={_APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version={_fingerprint_version(fingerprint)}")
        for t in tables:
            conn.execute(create_table_sql(t))
            if t.rows:
                marks = ", ".join("?" * len(t.columns))
                conn.executemany(f"INSERT INTO {quote_ident(t.name)} VALUES ({marks})", t.rows)
        conn.commit()
    finally:
        conn.close()
