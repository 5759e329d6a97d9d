"""SQLite files as converters and prompts read them: opening read-only, a database's tables
as :class:`~mlx_text2sql.example.Table` objects, empty databases built from a schema, the
tables a query mentions, and the ``db_path`` records store.

Pure Python: no MLX import.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from ..example import Column, Table
from .schema_text import quiet_sqlglot, schema_ddl

def connect_readonly(path: str | os.PathLike) -> sqlite3.Connection:
    """Open a SQLite file read-only (works on read-only file systems); cells that are not
    valid UTF-8 (a few Spider databases hold some) decode with replacement characters."""
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    conn.text_factory = lambda b: b.decode("utf-8", errors="replace")
    return conn


def is_sqlite_database(path: str | os.PathLike) -> bool:
    """True when ``path`` is a readable SQLite file holding at least one table."""
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        return False
    try:
        conn = connect_readonly(p)
        try:
            return conn.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0] > 0
        finally:
            conn.close()
    except sqlite3.Error:
        return False


def tables_from_database(path: str | os.PathLike, sample_rows: int = 3,
                         names: Iterable[str] | None = None) -> list[Table]:
    """The tables of a SQLite file as :class:`Table` objects (declared types, primary and
    foreign keys, ``sample_rows`` rows each), in creation order, SQLite's own tables left out.

    Rendered with :func:`mlx_text2sql.prompts.render_schema`, a database written by the WikiSQL
    converter gives exactly the schema text of its training records, so a model is asked
    about a live database (``generate --db``) in the form it was trained on. ``names``
    restricts the result to those tables (matched case-insensitively).
    """
    wanted = {n.lower() for n in names} if names is not None else None
    conn = connect_readonly(path)
    try:
        out = []
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                    "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY rowid"):
            if wanted is not None and name.lower() not in wanted:
                continue
            q = quote_name(name)
            info = conn.execute(f"PRAGMA table_info({q})").fetchall()
            table = Table(name=name, columns=[Column(c[1], (c[2] or "").upper()) for c in info])
            table.primary_key = [c[1] for c in sorted(info, key=lambda c: c[5]) if c[5] > 0]
            # (id, seq, table, from, to, ...); 'to' is NULL when it names the primary key. SQLite
            # numbers a table's foreign keys last-declared first: listed here in declaration
            # order, as the CREATE TABLE (and Spider's tables.json) give them.
            fks = conn.execute(f"PRAGMA foreign_key_list({q})").fetchall()
            for fk in sorted(fks, key=lambda r: (-r[0], r[1])):
                table.foreign_keys.append((fk[3], fk[2], fk[4] or _primary_key(conn, fk[2]) or fk[3]))
            if sample_rows > 0 and table.columns:
                cols = ", ".join(quote_name(c.name) for c in table.columns)
                table.rows = [list(r) for r in
                              conn.execute(f"SELECT {cols} FROM {q} LIMIT {int(sample_rows)}")]
            out.append(table)
        return out
    finally:
        conn.close()


def _primary_key(conn: sqlite3.Connection, table: str) -> str | None:
    """The one primary-key column of ``table`` (what ``REFERENCES table`` names), else None."""
    pk = [c[1] for c in conn.execute(f"PRAGMA table_info({quote_name(table)})") if c[5] > 0]
    return pk[0] if len(pk) == 1 else None


def quote_name(name: str) -> str:
    from ..prompts import quote_ident

    return quote_ident(name)


def create_empty_database(path: str | os.PathLike, tables: list[Table]) -> str | None:
    """Create a SQLite file holding ``tables`` with no rows (NSQL, sql-create-context).

    Returns None on success, else the SQLite error text (the file is then removed): a schema
    that SQLite rejects still yields examples, just without a database.
    """
    path = Path(path)
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        for t in tables:
            ddl = t.create_sql if t.create_sql else schema_ddl([t])[0]
            conn.execute(ddl)
        conn.commit()
        return None
    except sqlite3.Error as e:
        conn.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return str(e)
    finally:
        conn.close()


def tables_in_sql(sql: str, tables: Iterable[Table]) -> set[str]:
    """Names of the ``tables`` a query mentions (case-insensitive).

    Reads table references with sqlglot; when it cannot parse the query, falls back to
    looking for each name as a whole word, which can only over-count (keep too much schema).
    """
    names = {t.name.lower(): t.name for t in tables}
    try:
        import sqlglot
        from sqlglot import expressions as exp

        found = set()
        with quiet_sqlglot():
            trees = sqlglot.parse(sql, read="sqlite")
        for tree in trees:
            if tree is None:
                continue
            for node in tree.find_all(exp.Table):
                if node.name.lower() in names:
                    found.add(names[node.name.lower()])
        if found:
            return found
    except Exception:  # noqa: BLE001 - any parse failure falls back to the word search
        pass
    low = sql.lower()
    return {orig for key, orig in names.items()
            if re.search(r"(?<![\w])" + re.escape(key) + r"(?![\w])", low)}


def relative_db_path(db_path: str | None, out_dir: str | os.PathLike) -> str | None:
    """``db_path`` relative to the JSONL folder (POSIX separators), as records store it."""
    if db_path is None:
        return None
    try:
        rel = os.path.relpath(os.path.abspath(db_path), os.path.abspath(out_dir))
    except ValueError:  # another drive on Windows
        return os.path.abspath(db_path)
    return Path(rel).as_posix()
