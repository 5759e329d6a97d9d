"""CREATE TABLE text (NSQL, sql-create-context) read into :class:`~mlx_text2sql.example.Table`
objects with sqlglot, so every source's schema renders the same way; a statement sqlglot cannot
read is kept verbatim in ``Table.create_sql``.

Pure Python: no MLX import.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Iterable

from ..example import Column, Table
from ..sql.ddl import create_table_name
from ..sql.lexer import mask

_CREATE_RE = re.compile(r"\bCREATE\s+(?:TEMP\s+|TEMPORARY\s+)?TABLE\b", re.I)
_STATEMENT_END = re.compile(r"[();]")
_TABLE_OPTIONS = re.compile(r"[ \t]*(WITHOUT\s+ROWID|STRICT)?", re.I)


def split_create_statements(text: str) -> list[str]:
    """The CREATE TABLE statements in ``text``, each up to its closing parenthesis.

    Statements may be separated by ';', blank lines or nothing (sql-create-context joins them
    with '; ', NSQL with blank lines); comments and quoted names are skipped correctly.
    """
    # Searched in the masked text (comments, strings and quoted names blanked, positions kept),
    # cut from the original.
    code = mask(text)
    out = []
    i, n = 0, len(text)
    while (m := _CREATE_RE.search(code, i)) is not None:
        start, j, depth = m.start(), n, 0
        for p in _STATEMENT_END.finditer(code, m.end()):
            ch = p.group()
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    j = p.end()
                    break
            elif depth == 0:  # ';' outside the column list
                j = p.start()
                break
        # Table options after ')' (WITHOUT ROWID, STRICT) run to the end of the line.
        j = _TABLE_OPTIONS.match(text, j).end()
        out.append(text[start:j].strip())
        i = j
    return out


def _table_name_guess(stmt: str) -> str:
    name = create_table_name(stmt)
    return "?" if name is None else name


@contextlib.contextmanager
def quiet_sqlglot():
    """Silence sqlglot's "falling back to parsing as a Command" warnings: a statement it
    cannot read is handled (kept verbatim) by the caller."""
    logger = logging.getLogger("sqlglot")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def parse_create_table(stmt: str) -> Table:
    """One CREATE TABLE statement as a :class:`Table` (columns, types, primary/foreign keys).

    Types are sqlglot's spelling of the declared type (``INTEGER`` reads as ``INT``); a
    statement sqlglot cannot parse, or one with no column list (``CREATE TABLE x AS SELECT``),
    or one with table options (``WITHOUT ROWID``, ``STRICT``) comes back with its name guessed
    and the text kept in ``create_sql``.
    """
    import sqlglot
    from sqlglot import expressions as exp

    try:
        with quiet_sqlglot():
            tree = sqlglot.parse_one(stmt, read="sqlite")
        schema = tree.this if isinstance(tree, exp.Create) else None
        if not isinstance(schema, exp.Schema) or not isinstance(schema.this, exp.Table):
            raise ValueError("no column list")
        if tree.args.get("properties") is not None:
            # table options (WITHOUT ROWID, STRICT, ...) a rendering from columns would lose
            raise ValueError("table options")
        table = Table(name=schema.this.name)
        for item in schema.expressions:
            if isinstance(item, exp.ColumnDef):
                kind = item.args.get("kind")
                table.columns.append(Column(item.name, kind.sql() if kind is not None else ""))
                for cons in item.args.get("constraints") or []:
                    ckind = cons.args.get("kind")
                    if isinstance(ckind, exp.PrimaryKeyColumnConstraint):
                        table.primary_key.append(item.name)
                    elif isinstance(ckind, exp.Reference):
                        ref_table, ref_cols = _reference(ckind)
                        if ref_table:
                            table.foreign_keys.append((item.name, ref_table, ref_cols[0] if ref_cols else item.name))
            elif isinstance(item, exp.PrimaryKey):
                table.primary_key.extend(_ident_name(e) for e in item.expressions)
            elif isinstance(item, exp.ForeignKey):
                ref = item.args.get("reference")
                ref_table, ref_cols = _reference(ref) if ref is not None else (None, [])
                cols = [_ident_name(e) for e in item.expressions]
                if ref_table:
                    for k, col in enumerate(cols):
                        table.foreign_keys.append((col, ref_table, ref_cols[k] if k < len(ref_cols) else col))
        if not table.columns:
            raise ValueError("no columns")
        return table
    except Exception:  # noqa: BLE001 - sqlglot raises many kinds; the statement is kept verbatim
        return Table(name=_table_name_guess(stmt), create_sql=stmt.strip().rstrip(";"))


def _ident_name(node) -> str:
    return node.name if hasattr(node, "name") and node.name else node.sql()


def _reference(ref) -> tuple[str | None, list[str]]:
    from sqlglot import expressions as exp

    target = ref.this
    if isinstance(target, exp.Schema):
        return target.this.name, [_ident_name(e) for e in target.expressions]
    if isinstance(target, exp.Table):
        return target.name, []
    return None, []


def parse_schema_text(text: str) -> list[Table]:
    """Every CREATE TABLE statement in ``text`` as a :class:`Table`, in order, repaired by
    :func:`merge_tables` so that SQLite accepts the schema."""
    return merge_tables([parse_create_table(s) for s in split_create_statements(text)])[0]


def merge_tables(tables: list[Table]) -> tuple[list[Table], bool]:
    """One table per name, one column per name (SQLite compares names case-insensitively).

    sql-create-context sometimes declares a table twice with different columns
    (``CREATE TABLE artist (artist_name ...); ... CREATE TABLE artist (artist_name, country)``)
    or a column twice (``Price``, ``price``): no database can hold that schema, so the columns
    are united in first-seen order. A table kept verbatim (``create_sql``) is not merged; a
    later duplicate of it is dropped. Returns the tables and whether anything changed.
    """
    merged: dict[str, Table] = {}
    changed = False
    for t in tables:
        key = t.name.lower()
        if t.create_sql:
            if key in merged:
                changed = True
            else:
                merged[key] = t
            continue
        target = merged.get(key)
        if target is None:
            target = merged[key] = Table(name=t.name)
        else:
            changed = True
            if target.create_sql:
                continue
        have = {c.name.lower() for c in target.columns}
        for c in t.columns:
            if c.name.lower() in have:
                changed = True
                continue
            have.add(c.name.lower())
            target.columns.append(Column(c.name, c.type))
        for pk in t.primary_key:
            if pk.lower() not in {p.lower() for p in target.primary_key}:
                target.primary_key.append(pk)
        for fk in t.foreign_keys:
            if fk not in target.foreign_keys:
                target.foreign_keys.append(fk)
    return list(merged.values()), changed


def schema_ddl(tables: Iterable[Table]) -> list[str]:
    """CREATE TABLE statements that build ``tables`` in SQLite (quoted names, keys kept)."""
    from ..prompts import render_table

    return [render_table(t, sample_rows=0).rstrip(";") for t in tables]


def schema_key(tables: Iterable[Table]) -> str:
    """A short stable id of a schema's structure (names, types, keys; not sample rows)."""
    h = hashlib.sha1()
    for stmt in schema_ddl(tables):
        h.update(stmt.encode("utf-8") + b"\0")
    return "s" + h.hexdigest()[:12]
