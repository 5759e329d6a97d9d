"""Shorter schemas for an example over ``max_seq_length``: the SQL is never cut, the schema
loses its sample rows first, then the tables the SQL does not use."""

from __future__ import annotations

import re

from ...sql.ddl import create_table_name
from ...sql.lexer import block_comments, identifiers, mask

# A CREATE TABLE that starts a line or follows a ';', searched in code only (lexer.mask).
_CREATE = re.compile(r"(?im)(?:^|(?<=;))\s*CREATE\s+TABLE\b")
# The schema inside a user turn that prompts.user_message wrote.
_PROMPT_SCHEMA = re.compile(r"Schema:\n(.*?)\n\nQuestion:", re.S)


def split_tables(schema: str) -> list[str]:
    """The schema's CREATE TABLE statements (each with its sample-row comment)."""
    starts = [m.start() for m in _CREATE.finditer(mask(schema))]
    if not starts:
        return [schema]
    starts[0] = 0
    return [schema[a:b].strip() for a, b in zip(starts, starts[1:] + [len(schema)]) if schema[a:b].strip()]


def table_name(statement: str) -> str | None:
    """The name the statement's CREATE TABLE defines, unquoted (None when it has none)."""
    return create_table_name(statement)


def _without_block_comments(text: str) -> str:
    """``text`` without its ``/* ... */`` comments (the sample rows), each with the line break
    before it; comments inside strings, quoted names or ``--`` comments are not comments."""
    parts, last = [], 0
    for start, end in block_comments(text):
        cut = start - 1 if start > last and text[start - 1] == "\n" else start
        parts.append(text[last:cut])
        last = end
    parts.append(text[last:])
    return "".join(parts)


def trimmed_schemas(schema: str, sql: str) -> list[str]:
    """Shorter versions of ``schema``, most complete first: without sample rows; only the
    tables the SQL names (a bare or quoted name, any case; not a word in a string) with rows,
    then without. Each is kept only if it is shorter."""
    no_rows = _without_block_comments(schema).strip()
    tables = split_tables(schema)
    names = {name.lower() for name in identifiers(sql)}
    used = [t for t in tables if (n := table_name(t)) is None or n.lower() in names]
    out = []
    for cand in (no_rows, "\n\n".join(used), _without_block_comments("\n\n".join(used)).strip()):
        if cand and len(cand) < len(schema) and cand not in out:
            out.append(cand)
    return out


def prompt_schema(content: str, rec: dict) -> str | None:
    """The schema text inside a user turn: the record's ``schema`` when the turn holds it,
    else what follows ``Schema:`` in the prompt format; None (or empty) when there is none."""
    schema = rec.get("schema")
    if isinstance(schema, str) and schema in content:
        return schema
    m = _PROMPT_SCHEMA.search(content)
    return m.group(1) if m else None
