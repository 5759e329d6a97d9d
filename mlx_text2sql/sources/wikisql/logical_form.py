"""A WikiSQL logical form (``sel``, ``agg``, ``conds``) as SQLite SQL (see the package docstring
for why it returns the official answer).

Pure Python: no MLX import.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from ...prompts import quote_ident
from ..reading import Where, check_type, describe, is_number, require

if TYPE_CHECKING:
    from .tables import WikiTable

AGG_OPS = ["", "MAX", "MIN", "COUNT", "SUM", "AVG"]
COND_OPS = ["=", ">", "<", "OP"]

# Official engine's fallback: the first number in the text (it never matches a sign before
# an integer, and neither do we).
_FIRST_NUMBER = re.compile(r"[-+]?\d*\.\d+|\d+")

_SQLITE_NUMBER = re.compile(r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$")


def stored_value(value: Any, col_type: str) -> Any:
    """A cell as SQLite stores it in a column of this type (column affinity): numbers and
    numeric text in ``REAL`` columns become floats, numbers in ``TEXT`` columns text."""
    if value is None:
        return None
    if col_type == "real":
        if is_number(value):
            return float(value)
        return float(value) if _SQLITE_NUMBER.match(value) else value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return value


def official_number(text: str) -> float | None:
    """A condition value on a ``real`` column read as the official engine reads it:
    thousands separators dropped and parsed as a decimal, else the first number in the text,
    else None (the text is then compared as text)."""
    try:
        d = Decimal(text.replace(",", "").strip())
        if d.is_finite():
            return float(d)
    except (InvalidOperation, ValueError):
        pass
    m = _FIRST_NUMBER.search(text)
    return float(m.group()) if m else None


def number_literal(value: int | float, compact: bool = True) -> str:
    """A SQL numeric literal; with ``compact``, integral floats are written without '.0'."""
    if isinstance(value, int):
        return str(value)
    if compact and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def string_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def condition_literal(value: Any, col_type: str) -> str:
    """The SQL literal of a condition value on a column of ``col_type`` (see the module doc)."""
    if col_type == "real":
        if is_number(value):
            return number_literal(value)
        number = official_number(value)
        return number_literal(number) if number is not None else string_literal(value)
    if is_number(value):
        # Exact repr: SQLite turns the number into text (column affinity) the same way the
        # official engine's bound parameter is, '3.0' stays '3.0'.
        return number_literal(value, compact=False)
    return string_literal(value)


def normalize_logical_form(sql: Any, where: Where) -> dict:
    """``{"sel": int, "agg": int, "conds": [[col, op, value], ...]}`` from either the official
    shape or Hugging Face's (``conds`` as ``column_index``/``operator_index``/``condition``)."""
    if not isinstance(sql, dict):
        raise where.error(f"field 'sql' must be an object, got {describe(sql)}")
    sel = require(sql, "sel", int, where)
    agg = require(sql, "agg", int, where)
    conds = sql.get("conds", [])
    if isinstance(conds, dict):  # Hugging Face datasets layout
        cols = require(conds, "column_index", list, where)
        ops = require(conds, "operator_index", list, where)
        vals = require(conds, "condition", list, where)
        if not len(cols) == len(ops) == len(vals):
            raise where.error("sql.conds: column_index, operator_index and condition differ in length")
        conds = [list(c) for c in zip(cols, ops, vals)]
    if not isinstance(conds, list):
        raise where.error(f"field 'conds' must be a list, got {describe(conds)}")
    out = []
    for cond in conds:
        if not isinstance(cond, (list, tuple)) or len(cond) != 3:
            raise where.error(f"a condition must be [column, operator, value], got {describe(cond)}")
        col, op, value = cond
        check_type(col, "conds column", int, where)
        check_type(op, "conds operator", int, where)
        check_type(value, "conds value", (str, int, float), where)
        if isinstance(value, float) and not math.isfinite(value):
            raise where.error(f"condition value {value!r} is not a finite number")
        out.append([col, op, value])
    return {"sel": sel, "agg": agg, "conds": out}


def logical_form_to_sql(lf: dict, table: WikiTable, where: Where) -> str:
    """SQLite SQL for a normalized logical form over ``table`` (see the module docstring)."""
    n = len(table.columns)
    sel, agg = lf["sel"], lf["agg"]
    if not 0 <= sel < n:
        raise where.error(f"select column index {sel} is out of range: table {table.id!r} has {n} columns")
    if not 0 <= agg < len(AGG_OPS):
        raise where.error(f"unknown aggregation index {agg} (expected 0-5: none, MAX, MIN, COUNT, SUM, AVG)")
    column = quote_ident(table.columns[sel])
    select = f"{AGG_OPS[agg]}({column})" if agg else column
    parts = []
    for col, op, value in lf["conds"]:
        if not 0 <= col < n:
            raise where.error(f"condition column index {col} is out of range: table {table.id!r} has {n} columns")
        if not 0 <= op < 3:
            raise where.error(f"unknown condition operator index {op} (expected 0-2: =, >, <)")
        if op == 0 and isinstance(value, str) and table.types[col] == "text" and not value.isascii():
            value = table.spelling(col, value)
        parts.append(f"{quote_ident(table.columns[col])} {COND_OPS[op]} "
                     f"{condition_literal(value, table.types[col])}")
    sql = f"SELECT {select} FROM {quote_ident(table.name)}"
    if parts:
        sql += " WHERE " + " AND ".join(parts)
    return sql
