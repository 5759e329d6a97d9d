"""Reading CREATE TABLE text with the lexer: the name a statement defines.

Pure Python: no MLX import.
"""

from __future__ import annotations

import re

from .lexer import mask, token_at

__all__ = ["create_table_name"]

_CREATE_TABLE = re.compile(r"\bCREATE\s+(?:TEMP\s+|TEMPORARY\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?", re.I)
_BARE_NAME = re.compile(r"[^\s(]+")


def create_table_name(stmt: str) -> str | None:
    """The table name of the first ``CREATE [TEMP] TABLE [IF NOT EXISTS] name`` in ``stmt``
    (in code, not in a comment or a string), unquoted; None when there is none.

    A quoted name (``"..."``, ```...```, ``[...]``) is returned without its quotes and with
    doubled quotes undone; a bare name runs to the next whitespace or ``(``, as written
    (``main.t`` stays ``main.t``).
    """
    # A statement that starts with CREATE TABLE (the usual case) needs no masking: nothing
    # before it can be a comment or a quote.
    m = _CREATE_TABLE.match(stmt, len(stmt) - len(stmt.lstrip()))
    if m is None:
        m = _CREATE_TABLE.search(mask(stmt))
        if m is None:
            return None
    at = m.end()
    if at < len(stmt) and stmt[at] in "\"`[":
        return token_at(stmt, at).value
    name = _BARE_NAME.match(stmt, at)
    return name.group() if name else None
