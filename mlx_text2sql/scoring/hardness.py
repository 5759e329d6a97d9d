"""Spider's difficulty buckets (:func:`spider_hardness`).

Spider's published difficulty buckets, computed from the top-level query the way Spider's
evaluation script counts. Three counts:

* ``c1`` (SQL components): one each for WHERE, GROUP BY, ORDER BY, LIMIT; one per joined table
  beyond the first; one per ``OR`` and one per ``LIKE`` in WHERE, HAVING and join conditions.
* ``c2`` (nesting): subqueries used as condition values in WHERE / HAVING / join conditions,
  plus one for a UNION / INTERSECT / EXCEPT (Spider nests the right-hand query in the left).
* ``others``: one each for more than one aggregate, more than one selected column, more than
  one WHERE condition, more than one GROUP BY column. Aggregates are counted where Spider's
  script counts them, quirks included so buckets compare with published numbers: aggregates
  at the root of SELECT, GROUP BY and ORDER BY items; for WHERE, the negated conditions
  (``NOT IN``, ``NOT LIKE``, ``NOT BETWEEN``); for HAVING, the ``AND``/``OR`` connectors.

Then: easy if ``c1 <= 1, others == 0, c2 == 0``; medium if ``c2 == 0`` and (``others <= 2,
c1 <= 1`` or ``c1 <= 2, others < 2``); hard if (``c2 == 0`` and (``others > 2, c1 <= 2`` or
``2 < c1 <= 3, others <= 2``)) or (``c1 <= 1, others == 0, c2 <= 1``); extra otherwise.
It works on Spider's parsed ``sql`` dict or on SQL text (through sqlglot); on Spider dev the
two agree on nearly every query (see tests).
"""

from __future__ import annotations

from sqlglot import exp

from ..errors import InputError
from .parsing import DIALECT, _own_sources, _parse_one

HARDNESS_LEVELS = ("easy", "medium", "hard", "extra")


_WHERE_OPS = ("not", "between", "=", ">", "<", ">=", "<=", "!=", "in", "like", "is", "exists")
_LIKE = _WHERE_OPS.index("like")
_SPIDER_AGGS = (exp.Max, exp.Min, exp.Count, exp.Sum, exp.Avg)


def _bucket(c1: int, c2: int, others: int) -> str:
    if c1 <= 1 and others == 0 and c2 == 0:
        return "easy"
    if c2 == 0 and ((others <= 2 and c1 <= 1) or (c1 <= 2 and others < 2)):
        return "medium"
    if (c2 == 0 and ((others > 2 and c1 <= 2) or (2 < c1 <= 3 and others <= 2))) \
            or (c1 <= 1 and others == 0 and c2 <= 1):
        return "hard"
    return "extra"


def _dict_counts(sql: dict) -> tuple[int, int, int]:
    where, having = sql.get("where") or [], sql.get("having") or []
    frm = sql.get("from") or {}
    join_conds = frm.get("conds") or []
    table_units = frm.get("table_units") or []
    group, order = sql.get("groupBy") or [], sql.get("orderBy") or []
    conds = where[::2] + having[::2] + join_conds[::2]
    connectors = where[1::2] + having[1::2] + join_conds[1::2]

    c1 = sum(bool(x) for x in (where, group, order)) + (sql.get("limit") is not None)
    c1 += max(len(table_units) - 1, 0)
    c1 += sum(1 for t in connectors if t == "or")
    c1 += sum(1 for c in conds if c[1] == _LIKE)

    c2 = sum(isinstance(v, dict) for c in conds for v in (c[3], c[4]))
    c2 += sum(sql.get(k) is not None for k in ("intersect", "except", "union"))

    def agg(unit) -> bool:  # Spider's has_agg: first element differs from AGG_OPS 'none' (0)
        return unit[0] != 0

    aggs = sum(agg(u) for u in sql["select"][1])
    aggs += sum(agg(u) for u in where[::2])  # first element of a cond unit: its NOT flag
    aggs += sum(agg(u) for u in group)
    if order:
        units = [v[1] for v in order[1] if v[1]] + [v[2] for v in order[1] if v[2]]
        aggs += sum(agg(u) for u in units)
    aggs += sum(agg(u) for u in having)  # connectors are strings: they count, cond units not
    others = (aggs > 1) + (len(sql["select"][1]) > 1) + (len(where) > 1) + (len(group) > 1)
    return c1, c2, others


def _leaves(cond: exp.Expression | None) -> list[exp.Expression]:
    """Condition units of a WHERE/HAVING/ON tree: AND/OR (and their parentheses) flattened."""
    if cond is None:
        return []
    if isinstance(cond, exp.Paren) and isinstance(cond.this, exp.Connector):
        return _leaves(cond.this)
    if isinstance(cond, exp.Connector):
        return _leaves(cond.this) + _leaves(cond.expression)
    return [cond]


def _connectors(cond: exp.Expression | None, kind) -> int:
    if cond is None:
        return 0
    if isinstance(cond, exp.Paren) and isinstance(cond.this, exp.Connector):
        return _connectors(cond.this, kind)
    if isinstance(cond, exp.Connector):
        return (isinstance(cond, kind)) + _connectors(cond.this, kind) \
            + _connectors(cond.expression, kind)
    return 0


def _is_like(unit: exp.Expression) -> bool:
    inner = unit.this if isinstance(unit, exp.Not) else unit
    return isinstance(inner, (exp.Like, exp.ILike))


def _is_negated(unit: exp.Expression) -> bool:
    return isinstance(unit, exp.Not) or bool(unit.args.get("negate"))


def _subqueries(unit: exp.Expression) -> int:
    """Subqueries used as values of one condition unit (not counting deeper nesting)."""
    n, stack = 0, [unit]
    while stack:
        node = stack.pop()
        if isinstance(node, exp.Query) and node is not unit:
            n += 1
            continue
        stack.extend(node.iter_expressions())
    return n


def _is_agg(node: exp.Expression | None) -> bool:
    while isinstance(node, (exp.Alias, exp.Paren, exp.Distinct)):
        node = node.this
    return isinstance(node, _SPIDER_AGGS)


def _text_counts(tree: exp.Expression) -> tuple[int, int, int]:
    c2 = 0
    main = tree
    while isinstance(main, (exp.SetOperation, exp.Subquery)):
        if isinstance(main, exp.SetOperation):
            c2 = 1  # Spider nests the right-hand side (and anything after it) in the left
        main = main.this
    if not isinstance(main, exp.Select):
        raise InputError(f"not a SELECT query: {tree.sql(dialect=DIALECT)[:80]}")

    where = main.args.get("where")
    having = main.args.get("having")
    group = main.args.get("group")
    order = main.args.get("order") if main is tree else None  # a set op's ORDER BY is nested
    limit = main.args.get("limit") if main is tree else None
    joins = main.args.get("joins") or []
    on_conds = [j.args.get("on") for j in joins if j.args.get("on") is not None]
    where_units = _leaves(where.this if where else None)
    having_units = _leaves(having.this if having else None)
    units = where_units + having_units + [u for c in on_conds for u in _leaves(c)]

    c1 = (where is not None) + (group is not None) + (order is not None) + (limit is not None)
    c1 += max(len(_own_sources(main)) - 1, 0)
    c1 += sum(_connectors(c, exp.Or) for c in
              [where.this if where else None, having.this if having else None] + on_conds)
    c1 += sum(_is_like(u) for u in units)
    c2 += sum(_subqueries(u) for u in units)

    group_items = group.expressions if group is not None else []
    order_items = [o.this for o in order.expressions] if order is not None else []
    aggs = sum(_is_agg(e) for e in main.expressions)
    aggs += sum(_is_negated(u) for u in where_units)
    aggs += sum(_is_agg(e) for e in group_items)
    for item in order_items:
        if isinstance(item, exp.Binary) and not isinstance(item, exp.Connector):
            aggs += _is_agg(item.this) + _is_agg(item.expression)
        else:
            aggs += _is_agg(item)
    aggs += max(len(having_units) - 1, 0)
    others = (aggs > 1) + (len(main.expressions) > 1) + (len(where_units) > 1) \
        + (len(group_items) > 1)
    return c1, c2, others


def spider_hardness(sql: dict | str) -> str:
    """Spider's difficulty bucket ("easy", "medium", "hard" or "extra") of a query, given as
    Spider's parsed ``sql`` dict (from dev.json / train_spider.json) or as SQL text.

    Raises :class:`InputError` for text that does not parse as one SELECT."""
    if isinstance(sql, dict):
        if "select" not in sql:
            raise InputError("not a Spider sql dict (no 'select' key)")
        return _bucket(*_dict_counts(sql))
    tree = _parse_one(sql)
    if tree is None:
        raise InputError(f"cannot parse SQL to grade its hardness: {str(sql)[:80]!r}")
    return _bucket(*_text_counts(tree))
