"""Reading a query the way every scoring rule does: SQL text to one sqlglot tree, and the
tables a SELECT reads from."""

from __future__ import annotations

import re

import sqlglot
from sqlglot import exp

DIALECT = "sqlite"

# A number in plain decimal (or exponent) notation: numeric text in result cells, numeric
# string literals in queries.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
# The comparisons whose string-literal operand the scoring rules rewrite.
_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)


def _parse_one(sql: str) -> exp.Expression | None:
    """One statement parsed with sqlglot, or None (unparsable, empty, several statements)."""
    if not isinstance(sql, str) or not sql.strip():
        return None
    try:
        trees = [t for t in sqlglot.parse(sql, read=DIALECT) if t is not None]
    except (sqlglot.errors.SqlglotError, ValueError, RecursionError):
        return None
    return trees[0] if len(trees) == 1 else None


def _from_of(select: exp.Expression) -> exp.Expression | None:
    # sqlglot >= 28 names the FROM clause "from_"; older releases "from".
    return select.args.get("from_") or select.args.get("from")


def _own_sources(select: exp.Select) -> list[exp.Expression]:
    """The FROM and JOIN sources of one SELECT (tables or aliased subqueries)."""
    out = []
    frm = _from_of(select)
    if frm is not None:
        out.extend(frm.expressions or [frm.this])
    out.extend(j.this for j in select.args.get("joins") or [])
    return [s for s in out if s is not None]
