"""SQL cases shared by the tests of more than one module."""

from __future__ import annotations

# ``split_statements``: text -> the statements it holds (stripped, without the semicolons).
SPLIT_CASES: list[tuple[str, list[str]]] = [
    ("SELECT 1", ["SELECT 1"]),
    ("SELECT 1;", ["SELECT 1"]),
    ("SELECT 1;;", ["SELECT 1"]),
    ("SELECT 1; SELECT 2", ["SELECT 1", "SELECT 2"]),
    ("SELECT ';'", ["SELECT ';'"]),
    ("SELECT 'it''s; fine'", ["SELECT 'it''s; fine'"]),
    ('SELECT "a;b" FROM t', ['SELECT "a;b" FROM t']),
    ("SELECT [a;b], `c;d` FROM t", ["SELECT [a;b], `c;d` FROM t"]),
    ("SELECT 1 -- ; not a split\n", ["SELECT 1 -- ; not a split"]),
    ("SELECT 1 /* ; */ ; /* only a comment */", ["SELECT 1 /* ; */"]),
    ("  ;  ", []),
]
