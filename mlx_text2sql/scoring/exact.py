"""Exact match (:func:`exact_match`) of two queries through :func:`normalize_sql`.

the normalised texts must be equal. Normalisation: keyword and identifier case, identifier
quoting, whitespace and a trailing ``;``; double-quoted "values" on the right of a comparison
become string literals (Spider's gold writes ``name = "John"``); string literals are stripped
and lower-cased, and numeric ones become numbers (``'21'`` -> ``21``, ``1.0`` -> ``1``); table
aliases become the table name (or ``t1, t2, ...`` in order of appearance when a table is used
twice in one scope); a column qualifier is dropped when its scope has one table; output column
aliases are dropped (references from ORDER BY are replaced by the expression); ``AND``/``OR``
operands and the two sides of ``=``/``!=`` are put in a canonical order; ``INNER JOIN`` reads as
``JOIN`` and ``ASC`` as the default order. A query that does not parse, or holds more than one
statement, never matches.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import Counter
from typing import Iterable

import sqlglot
from sqlglot import exp

from .parsing import _COMPARISONS, _NUMBER, DIALECT, _own_sources, _parse_one


def _own_nodes(root: exp.Expression, kind) -> Iterable[exp.Expression]:
    """Nodes of ``kind`` under ``root`` that belong to ``root``'s own SELECT scope (not to a
    nested SELECT)."""
    stack = list(root.iter_expressions())
    while stack:
        node = stack.pop()
        if isinstance(node, exp.Query):
            continue
        if isinstance(node, kind):
            yield node
        stack.extend(node.iter_expressions())


def _rename_tables(tree: exp.Expression) -> None:
    counter = itertools.count(1)

    def visit(select: exp.Select, visible: dict[str, str], visible_tables: Counter) -> None:
        sources = [s for s in _own_sources(select) if isinstance(s, exp.Table)]
        names = Counter(s.name.lower() for s in sources)
        all_names = names + visible_tables
        mapping = dict(visible)
        for src in sources:
            name = src.name.lower()
            alias = src.alias.lower() if src.alias else None
            canonical = name if all_names[name] == 1 else f"t{next(counter)}"
            if alias:
                mapping[alias] = canonical
            if alias or canonical != name:
                mapping.setdefault(name, canonical)
            if canonical == name:
                src.set("alias", None)
            else:
                src.set("alias", exp.TableAlias(this=exp.to_identifier(canonical)))
        single = len(sources) == 1 and len(_own_sources(select)) == 1
        only = (sources[0].alias or sources[0].name).lower() if single else None
        for col in _own_nodes(select, exp.Column):
            qual = col.table.lower() if col.table else None
            if qual is None:
                continue
            new = mapping.get(qual, qual)
            if single and new == only:
                col.set("table", None)
            else:
                col.set("table", exp.to_identifier(new))
        for sub in _nested_selects(select):
            visit(sub, mapping, all_names)

    for top in _top_selects(tree):
        visit(top, {}, Counter())


def _top_selects(tree: exp.Expression) -> list[exp.Select]:
    if isinstance(tree, exp.Select):
        return [tree]
    if isinstance(tree, exp.SetOperation):
        return _top_selects(tree.this) + _top_selects(tree.expression)
    if isinstance(tree, exp.Subquery):
        return _top_selects(tree.this)
    return [s for s in tree.find_all(exp.Select) if s.parent_select is None]


def _nested_selects(select: exp.Select) -> list[exp.Select]:
    """SELECTs directly nested in ``select`` (in FROM, conditions or projections)."""
    out = []
    stack = list(select.iter_expressions())
    while stack:
        node = stack.pop()
        if isinstance(node, (exp.Select, exp.SetOperation)):
            out.extend(_top_selects(node))
            continue
        stack.extend(node.iter_expressions())
    return out


def _drop_output_aliases(tree: exp.Expression) -> None:
    for select in _top_selects(tree):
        aliases = {a.alias.lower(): a for a in select.expressions if isinstance(a, exp.Alias)}
        if not aliases:
            continue
        order = select.args.get("order")
        if order is not None:
            # In SQLite an ORDER BY name matches an output alias first: use the expression.
            for col in list(_own_nodes(order, exp.Column)):
                if not col.table and col.name.lower() in aliases:
                    col.replace(aliases[col.name.lower()].this.copy())
        used = set()
        for key, value in select.args.items():
            if key == "expressions":
                continue
            for node in value if isinstance(value, list) else [value]:
                if isinstance(node, exp.Column) and not node.table:
                    used.add(node.name.lower())
                elif isinstance(node, exp.Expression):
                    used.update(c.name.lower() for c in _own_nodes(node, exp.Column)
                                if not c.table)
        for name, alias in aliases.items():
            if name not in used:  # still referenced (WHERE, GROUP BY, HAVING): keep it
                alias.replace(alias.this)


def _literal_from_number(text: str) -> exp.Literal:
    num = float(text)
    if num.is_integer() and abs(num) < 2 ** 53:
        return exp.Literal.number(str(int(num)))
    return exp.Literal.number(repr(num))


def _normalize_values(tree: exp.Expression) -> None:
    # Double-quoted "values": SQLite reads "John" as a string when no column has that name,
    # and Spider's gold uses that form. A bare quoted identifier on the right of a comparison
    # (or in an IN list) is taken for a string literal.
    for node in list(tree.find_all(*_COMPARISONS, exp.Like, exp.In)):
        rights = node.expressions if isinstance(node, exp.In) else [node.expression]
        for r in rights:
            if isinstance(r, exp.Column) and not r.table and r.this.args.get("quoted"):
                r.replace(exp.Literal.string(r.name))
    for lit in list(tree.find_all(exp.Literal)):
        text = str(lit.this)
        if lit.is_string:
            stripped = text.strip()
            if _NUMBER.fullmatch(stripped) and math.isfinite(float(stripped)):
                lit.replace(_literal_from_number(stripped))
            else:
                lit.set("this", stripped.lower())
        elif _NUMBER.fullmatch(text):
            lit.replace(_literal_from_number(text))


def _canonical_order(tree: exp.Expression) -> None:
    for ident in tree.find_all(exp.Identifier):
        ident.set("this", ident.this.lower())
        ident.set("quoted", False)
    for join in tree.find_all(exp.Join):
        if (join.args.get("kind") or "").upper() == "INNER":
            join.set("kind", None)
    for ordered in tree.find_all(exp.Ordered):
        if not ordered.args.get("desc"):
            ordered.set("desc", None)
    # Bottom-up so inner chains are canonical before outer ones are sorted.
    for node in list(tree.find_all(exp.EQ, exp.NEQ, exp.And, exp.Or))[::-1]:
        if isinstance(node, (exp.EQ, exp.NEQ)):
            a, b = node.this, node.expression
            if a.sql(dialect=DIALECT) > b.sql(dialect=DIALECT):
                node.set("this", b.copy())
                node.set("expression", a.copy())
            continue
        if node.parent is not None and type(node.parent) is type(node):
            continue  # handled when its chain's root is reached
        kind = type(node)
        operands = [o.unnest() if isinstance(o, exp.Paren) and isinstance(o.this, kind) else o
                    for o in node.flatten()]
        flat = []
        for o in operands:
            flat.extend(o.flatten() if isinstance(o, kind) else [o])
        flat.sort(key=lambda o: o.sql(dialect=DIALECT))
        rebuilt = flat[0].copy()
        for o in flat[1:]:
            rebuilt = kind(this=rebuilt, expression=o.copy())
        node.replace(rebuilt)


@functools.lru_cache(maxsize=4096)
def normalize_sql(sql: str) -> str | None:
    """The canonical text :func:`exact_match` compares, or None if ``sql`` does not parse as
    exactly one statement."""
    tree = _parse_one(sql)
    if tree is None:
        return None
    try:
        tree = tree.copy()
        _normalize_values(tree)
        _rename_tables(tree)
        _drop_output_aliases(tree)
        _canonical_order(tree)
        return tree.sql(dialect=DIALECT, identify=True)
    except (sqlglot.errors.SqlglotError, ValueError, RecursionError):
        return None


def exact_match(gold_sql: str, pred_sql: str) -> bool:
    """Whether the two queries are the same after :func:`normalize_sql`; unparsable -> False."""
    gold = normalize_sql(gold_sql)
    return gold is not None and gold == normalize_sql(pred_sql)
