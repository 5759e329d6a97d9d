"""The schema of a live SQLite database as prompt tables, for ``generate --db``.

A database's tables become :class:`~mlx_text2sql.example.Table` objects (declared types,
primary and foreign keys, the first ``sample_rows`` rows) through
:func:`mlx_text2sql.sources.common.tables_from_database`, the reader the converters' output is
checked against, so a database written by ``convert`` renders (with
:func:`mlx_text2sql.prompts.render_schema`) to exactly the schema text its training records
hold. This module adds what a command line needs around it: errors that name the file and the
tables it does have, table selection in the order the user gave, and schema text validation.

Pure Python: no MLX import.
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path
from typing import Sequence

from .errors import InputError
from .example import Table
from .prompts import DEFAULT_SAMPLE_ROWS, render_schema


def _check_database(path: Path) -> None:
    if not path.exists():
        raise InputError("database not found", str(path))
    if not path.is_file():
        raise InputError("not a file (expected a SQLite database)", str(path))
    with open(path, "rb") as f:
        head = f.read(16)
    if head != b"SQLite format 3\x00":
        what = "an empty file" if not head else "not a SQLite database"
        raise InputError(f"{what} (expected a SQLite 3 file)", str(path))


def list_tables(db_path: str | os.PathLike) -> list[str]:
    """Names of the database's tables in creation order (SQLite's own tables left out)."""
    from .sources.common import connect_readonly

    path = Path(db_path)
    _check_database(path)
    try:
        conn = connect_readonly(path)
        try:
            return [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY rowid")]
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise InputError(f"cannot read the database ({e})", str(path)) from None


def read_tables(db_path: str | os.PathLike, tables: Sequence[str] | None = None,
                sample_rows: int = DEFAULT_SAMPLE_ROWS) -> list[Table]:
    """The database's tables (all, or ``tables`` in the order given, matched
    case-insensitively as SQLite does) with ``sample_rows`` rows each.

    Raises InputError for a missing or non-SQLite file, a database without tables, or a table
    name it does not hold (the message lists the tables it has).
    """
    from .sources.common import tables_from_database

    path = Path(db_path)
    names = list_tables(path)
    if not names:
        raise InputError("the database holds no tables", str(path))
    if tables is not None:
        have = {n.lower(): n for n in names}
        wanted = [t.strip() for t in tables if t.strip()]
        unknown = [t for t in wanted if t.lower() not in have]
        if unknown:
            shown = ", ".join(names[:20]) + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")
            raise InputError(f"no table {', '.join(map(repr, unknown))} in the database; it has: {shown}",
                             str(path))
        if not wanted:
            raise InputError("--tables names no table", str(path))
    try:
        found = tables_from_database(path, sample_rows, names=None if tables is None else wanted)
    except sqlite3.Error as e:
        raise InputError(f"cannot read the database ({e})", str(path)) from None
    if tables is None:
        return found
    by_name = {t.name.lower(): t for t in found}
    return [by_name[t.lower()] for t in dict.fromkeys(w.lower() for w in wanted)]


def schema_from_db(db_path: str | os.PathLike, tables: Sequence[str] | None = None,
                   sample_rows: int = DEFAULT_SAMPLE_ROWS) -> str:
    """The prompt's schema text for a database: :func:`read_tables` rendered as in training
    (a foreign key into a table not shown is left out, as ``convert`` leaves it out)."""
    from .prompting.selection import prune

    found = read_tables(db_path, tables, sample_rows)
    if tables is not None:
        found = prune(found, [t.name for t in found])
    return render_schema(found, sample_rows)


def validate_schema_text(text: str, where: str = "--schema") -> list[str]:
    """Check that ``text`` is one or more CREATE TABLE statements (comments such as the sample
    rows block allowed); returns the table names. Raises InputError naming the statement, the
    problem and, for a syntax error, its line and column."""
    import sqlglot
    from sqlglot import expressions as exp

    from .sources.common import quiet_sqlglot
    from .sql.lexer import split_statements, strip_leading_comments

    if not text or not text.strip():
        raise InputError("the schema is empty; give CREATE TABLE statements", where)
    statements = split_statements(text)
    if not statements:
        raise InputError("the schema holds only comments; give CREATE TABLE statements", where)
    names = []
    for i, stmt in enumerate(statements, 1):
        shown = strip_leading_comments(stmt)
        shown = " ".join(shown.split())
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        label = f"statement {i} ({shown!r})" if len(statements) > 1 else repr(shown)
        try:
            with quiet_sqlglot():
                tree = sqlglot.parse_one(stmt, read="sqlite")
        except sqlglot.errors.ParseError as e:
            first = e.errors[0] if getattr(e, "errors", None) else {}
            at = f" at line {first['line']}, column {first['col']}" if first.get("line") else ""
            detail = first.get("description") or str(e).splitlines()[0]
            raise InputError(f"{label} does not parse{at}: {detail}", where) from None
        except sqlglot.errors.SqlglotError as e:
            raise InputError(f"{label} does not parse: {str(e).splitlines()[0]}", where) from None
        if not (isinstance(tree, exp.Create) and str(tree.args.get("kind") or "").upper() == "TABLE"):
            raise InputError(f"{label} is not a CREATE TABLE statement", where)
        target = tree.this
        table = target.this if isinstance(target, exp.Schema) else target
        if not isinstance(target, exp.Schema) and tree.expression is None:
            raise InputError(f"{label} has no column list", where)
        names.append(table.name)
    return names



# --------------------------------------------------------------------------- table selection

# Question words that say nothing about which table is meant.
_STOPWORDS = frozenset("""
a an the of in on at to for from by with and or not no is are was were be been being has have
had do does did what which who whom whose when where why how many much more most less least
than that this these those there their it its as into over under all any each every some
list show give tell me find name names get number count total average sum maximum minimum
max min per before after between during same other only also please
""".split())
AUTO_ALL_TABLES = 3  # a schema this small is always shown whole


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _stem(word: str) -> str:
    for suffix in ("ies", "es", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def select_tables(db_path: str | os.PathLike, question: str,
                  max_scan_rows: int = 5000) -> tuple[list[str], str]:
    """The tables a question is about, for a database holding more than one schema's worth.

    Tables linked by foreign keys form one schema (a Spider database) and are kept together;
    unlinked tables (a collection of WikiSQL tables) stand alone. Each group is scored by the
    question's words found in its table and column names (2 points each) and in its cells (1
    point, searched in the first ``max_scan_rows`` rows); the best group is kept, with any
    other scoring at least half as much. Databases of at most ``AUTO_ALL_TABLES`` tables, or
    where nothing matches, are kept whole. Returns the table names (in the database's order)
    and a one-line reason for the log.
    """
    from .sources.common import connect_readonly

    tables = read_tables(db_path, None, 0)
    names = [t.name for t in tables]
    if len(tables) <= AUTO_ALL_TABLES:
        return names, f"all {len(tables)} tables"
    # Groups: connected components of the foreign-key graph.
    parent = {t.name.lower(): t.name.lower() for t in tables}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for t in tables:
        for _, ref, _ in t.foreign_keys:
            if ref.lower() in parent:
                parent[root(t.name.lower())] = root(ref.lower())
    words = [w for w in dict.fromkeys(_words(question)) if w not in _STOPWORDS]
    stems = {_stem(w) for w in words if not w.isdigit()}
    scores: dict[str, float] = {}
    conn = connect_readonly(db_path)
    try:
        for t in tables:
            label = {_stem(w) for w in _words(t.name) if w != "table" and not w.isdigit()}
            for c in t.columns:
                label |= {_stem(w) for w in _words(c.name)}
            score = 2.0 * len(stems & label)
            for w in words:
                if len(w) < 3 and not w.isdigit():
                    continue
                if _found_in_cells(conn, t, w, max_scan_rows):
                    score += 1.0
            scores[t.name] = score
    except sqlite3.Error:
        return names, "all tables (the database could not be searched)"
    finally:
        conn.close()
    group_score: dict[str, float] = {}
    for t in tables:
        g = root(t.name.lower())
        group_score[g] = max(group_score.get(g, 0.0), scores[t.name])
    best = max(group_score.values())
    if best <= 0:
        return names, f"all {len(tables)} tables (none matches the question's words)"
    keep = {g for g, s in group_score.items() if s >= 0.5 * best}
    chosen = [t.name for t in tables if root(t.name.lower()) in keep]
    why = f"{', '.join(chosen)} of {len(tables)} tables (best match for the question's words)"
    return chosen, why


def _found_in_cells(conn: sqlite3.Connection, table: Table, word: str, max_rows: int) -> bool:
    from .prompts import quote_ident

    if not table.columns:
        return False
    cols = " OR ".join(f"{quote_ident(c.name)} LIKE ? ESCAPE '\\'" for c in table.columns)
    pattern = "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    sql = (f"SELECT 1 FROM (SELECT * FROM {quote_ident(table.name)} LIMIT {int(max_rows)}) "
           f"WHERE {cols} LIMIT 1")
    return conn.execute(sql, [pattern] * len(table.columns)).fetchone() is not None
