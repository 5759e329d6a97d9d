"""Scoring predicted SQL: execution match, exact match, Spider hardness, and their summary.

``evaluate`` calls :func:`evaluate_prediction` once per ``(record, predicted SQL)`` and
:func:`summarize` / :func:`format_summary` at the end. Pure Python (sqlglot); no MLX.

Result comparison (:func:`results_match`)
=========================================
Gold and predicted queries both run through :mod:`mlx_text2sql.sqlexec`; their rows match when:

* **Rows** are equal as multisets (duplicates count). Order matters only when the gold SQL has a
  top-level ``ORDER BY`` (found with sqlglot: on the outer SELECT, or on a top-level
  UNION / INTERSECT / EXCEPT; an ORDER BY inside a subquery does not count).
* **Columns** may come in another order (as in Spider's test-suite evaluation): when gold and
  prediction have the same number of columns, the identity order is tried first, then column
  permutations that pair columns holding the same multiset of values (at most
  ``MAX_PERMUTATIONS`` are tried, so the cost stays bounded). Different column counts never
  match, except that two empty results always match (there is nothing to compare).
* **Numbers**: ints and floats compare numerically (``1 == 1.0``). Two ints must be equal
  (counts and ids are exact); when a float is involved, a relative tolerance of 1e-6 or an
  absolute one of 1e-9 applies (``AVG``/``SUM`` in another order differ in the last bits).
* **Numeric text equals the number it spells** (``'21' == 21``, ``' 3.50' == 3.5``): WikiSQL
  keeps numbers in ``text`` columns, so a correct query that aggregates or casts gives a number
  where the gold gives text. Only plain decimal notation counts (``'1e3'`` also does;
  ``'0x10'``, ``'inf'``, ``'1_000'``, ``'1996-97'`` stay text).
* **Text** compares with surrounding whitespace stripped and case folded, as WikiSQL's
  official evaluator does (``text_nocase=False`` makes case count).
* **NULL** equals NULL and nothing else. **Blobs** compare byte for byte.

**Spider records** (``source`` starting with ``"spider"``) are scored as Spider's official
execution evaluation scores them (``exact_values=True``): rows as multisets, order only when
the gold SQL has a top-level ORDER BY, columns in any order, and every value compared exactly:
no tolerance, no case folding or stripping, and text never equals a number (``'21' != 21``;
an int equals a float of the same value, as Python compares them). The lenient rules above are
WikiSQL's. Spider's queries also run with SQLite's default reading of double quotes (a
``"value"`` that names no column is a string), as Spider's official evaluation runs them: its
gold SQL writes values that way (``WHERE Airline = "JetBlue Airways"``). Every other record runs
with that fallback off, so an unknown double-quoted column is an error.

For WikiSQL records (``source`` starting with ``"wikisql"``) both queries also run with
case-insensitive string comparisons by default (:func:`case_insensitive_sql`: ``col = 'x'``
becomes ``col COLLATE CASEFOLD = 'x'``, a Unicode-aware collation every executor connection
carries; SQLite's NOCASE folds ASCII only). WikiSQL questions, and so the literals a model
copies from them, are lower-cased while the table cells are not; the official evaluator
compares them case-insensitively. Without this rule a correct lower-cased prediction returns
nothing (on WikiSQL dev, about half of the gold queries with lower-cased literals still
return the gold answer; with this rule, all of them).

Exact match (:func:`exact_match`)
=================================
Both queries are parsed with sqlglot (dialect sqlite) and normalised (:func:`normalize_sql`);
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

Hardness (:func:`spider_hardness`)
==================================
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

import functools
import itertools
import math
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import sqlglot
from sqlglot import exp

from .errors import InputError
from .sqlexec import CASEFOLD_COLLATION, try_execute

__all__ = [
    "results_match", "order_matters", "normalize_sql", "exact_match", "case_insensitive_sql",
    "spider_hardness", "evaluate_prediction", "summarize", "format_summary", "HARDNESS_LEVELS",
]

REL_TOL = 1e-6
ABS_TOL = 1e-9
MAX_PERMUTATIONS = 720  # 6! : every order of up to six interchangeable columns
HARDNESS_LEVELS = ("easy", "medium", "hard", "extra")
DIALECT = "sqlite"


def _parse_one(sql: str) -> exp.Expression | None:
    """One statement parsed with sqlglot, or None (unparsable, empty, several statements)."""
    if not isinstance(sql, str) or not sql.strip():
        return None
    try:
        trees = [t for t in sqlglot.parse(sql, read=DIALECT) if t is not None]
    except (sqlglot.errors.SqlglotError, ValueError, RecursionError):
        return None
    return trees[0] if len(trees) == 1 else None


# =========================================================================== result comparison

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)
_GREEDY_MAX_ROWS = 500  # quadratic fallback pairing: bounded cost
_NULL, _NUM, _TEXT, _BLOB = 0, 1, 2, 3


def _cell(v: Any, nocase: bool, exact: bool = False) -> tuple:
    """A comparable form: (type rank, value). Ints stay ints (compared exactly with each
    other), floats stay floats; numeric text becomes the int or float it spells (unless ``exact``: text stays text, as is)."""
    if v is None:
        return (_NULL, 0)
    if isinstance(v, (int, float)):  # bool is an int
        return (_NUM, v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return (_BLOB, bytes(v))
    if exact:
        return (_TEXT, str(v))
    s = str(v).strip()
    if _NUMBER.fullmatch(s):
        if _INTEGER.fullmatch(s):
            return (_NUM, int(s))
        num = float(s)
        if math.isfinite(num):
            return (_NUM, num)
    return (_TEXT, s.casefold() if nocase else s)


def _num_eq(a, b) -> bool:
    if a == b:
        return True
    if isinstance(a, int) and isinstance(b, int):
        return False  # counts, ids: exact
    a, b = float(a), float(b)
    if math.isnan(a) and math.isnan(b):
        return True
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def _cells_eq(a: tuple, b: tuple) -> bool:
    if a[0] != b[0]:
        return False
    return _num_eq(a[1], b[1]) if a[0] == _NUM else a[1] == b[1]


def _rows_eq(a: Sequence[tuple], b: Sequence[tuple]) -> bool:
    return all(_cells_eq(x, y) for x, y in zip(a, b))


def _coarse(cell: tuple) -> tuple:
    """A hashable key equal for cells that are equal within tolerance (but for values that
    straddle a rounding boundary); NaN gets one key."""
    if cell[0] == _NUM:
        v = float(cell[1])
        if math.isnan(v):
            return (_NUM, "nan")
        if abs(v) < ABS_TOL:
            return (_NUM, 0.0)
        return (_NUM, float(f"{v:.5e}"))
    return cell


def _multiset_eq(gold: list[tuple], pred: list[tuple]) -> bool:
    if len(gold) != len(pred):
        return False
    if Counter(gold) == Counter(pred):
        return True
    # Tolerant paths: sort by a coarse key and compare in step; if a rounding boundary splits
    # a pair, fall back to greedy pairing (quadratic, so only for small results).
    key = lambda row: tuple(_coarse(c) for c in row)  # noqa: E731
    try:
        g, p = sorted(gold, key=key), sorted(pred, key=key)
    except TypeError:  # NaN beside numbers in one column: no total order; use pairing
        g, p = gold, pred
    else:
        if all(_rows_eq(x, y) for x, y in zip(g, p)):
            return True
    if len(gold) > _GREEDY_MAX_ROWS:
        return False
    left = list(p)
    for row in g:
        for i, cand in enumerate(left):
            if _rows_eq(row, cand):
                del left[i]
                break
        else:
            return False
    return True


def _same(gold: list[tuple], pred: list[tuple], ordered: bool, exact: bool = False) -> bool:
    if exact:  # Python equality of the cells: 1 == 1.0, no tolerance
        return gold == pred if ordered else Counter(gold) == Counter(pred)
    if ordered:
        return len(gold) == len(pred) and all(_rows_eq(x, y) for x, y in zip(gold, pred))
    return _multiset_eq(gold, pred)


def _column_permutations(gold: list[tuple], pred: list[tuple], width: int) -> Iterable[tuple]:
    """Orders of the predicted columns worth trying: each gold column is paired only with
    predicted columns holding the same multiset of (coarse) values."""
    def signature(rows, j):
        return Counter(_coarse(r[j]) for r in rows)

    gold_sig = [signature(gold, j) for j in range(width)]
    pred_sig = [signature(pred, j) for j in range(width)]
    candidates = [[j for j in range(width) if pred_sig[j] == gold_sig[i]] for i in range(width)]
    if any(not c for c in candidates):
        return

    def search(i, used, chosen):
        if i == width:
            yield tuple(chosen)
            return
        for j in candidates[i]:
            if j not in used:
                used.add(j)
                chosen.append(j)
                yield from search(i + 1, used, chosen)
                chosen.pop()
                used.discard(j)

    yield from itertools.islice(search(0, set(), []), MAX_PERMUTATIONS)


def results_match(gold_rows: Sequence[Sequence[Any]], pred_rows: Sequence[Sequence[Any]], *,
                  ordered: bool = False, text_nocase: bool = True, exact_values: bool = False) -> bool:
    """Whether predicted rows answer the same as gold rows under the module's documented
    rules. ``ordered``: compare row order too (use :func:`order_matters` on the gold SQL);
    ``exact_values``: Spider's rules (values compared exactly, text never equals a number)."""
    if not gold_rows and not pred_rows:
        return True
    if not gold_rows or not pred_rows or len(gold_rows) != len(pred_rows):
        return False
    width = len(gold_rows[0])
    if any(len(r) != width for r in gold_rows) or any(len(r) != width for r in pred_rows):
        return False
    nocase = text_nocase and not exact_values
    gold = [tuple(_cell(v, nocase, exact_values) for v in r) for r in gold_rows]
    pred = [tuple(_cell(v, nocase, exact_values) for v in r) for r in pred_rows]
    if _same(gold, pred, ordered, exact_values):
        return True
    if width < 2:
        return False
    identity = tuple(range(width))
    for perm in _column_permutations(gold, pred, width):
        if perm == identity:
            continue
        if _same(gold, [tuple(r[j] for j in perm) for r in pred], ordered, exact_values):
            return True
    return False


def order_matters(gold_sql: str) -> bool:
    """True when the query's outermost SELECT (or set operation) has an ORDER BY."""
    tree = _parse_one(gold_sql)
    if tree is None:
        # Unparsable gold: fall back to the text, but ignore ORDER BY inside parentheses.
        depth, text = 0, []
        for ch in gold_sql or "":
            depth += ch == "("
            if depth == 0:
                text.append(ch)
            depth -= ch == ")" and depth > 0
        return re.search(r"\border\s+by\b", "".join(text), re.I) is not None
    return isinstance(tree, exp.Query) and tree.args.get("order") is not None


# =========================================================================== WikiSQL case rule

_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)


def case_insensitive_sql(sql: str) -> str:
    """``sql`` with every comparison against a string literal made case-insensitive
    (``col = 'x'`` -> ``col COLLATE CASEFOLD = 'x'``; ``col IN ('a', 'b')`` likewise).

    This is WikiSQL's official semantics (its evaluator compares text case-insensitively).
    ``CASEFOLD`` is registered on every :mod:`~mlx_text2sql.sqlexec` connection (it folds
    'Ş' and 'Б' too, where SQLite's NOCASE folds ASCII only); the rewritten text runs there.
    COLLATE keeps the column's affinity, so ``"No." = '21'`` still compares as it did.
    Returns ``sql`` unchanged when it does not parse or has nothing to rewrite."""
    tree = _parse_one(sql)
    if tree is None:
        return sql
    changed = False

    def nocase(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Collate):
            return node
        return exp.Collate(this=node.copy(), expression=exp.Var(this=CASEFOLD_COLLATION))

    for node in list(tree.find_all(*_COMPARISONS, exp.In)):
        if isinstance(node, exp.In):
            values = node.expressions
            if values and all(isinstance(v, exp.Literal) and v.is_string for v in values) \
                    and not isinstance(node.this, exp.Literal):
                node.set("this", nocase(node.this))
                changed = True
            continue
        left, right = node.this, node.expression
        if isinstance(right, exp.Literal) and right.is_string and not isinstance(left, exp.Literal):
            node.set("this", nocase(left))
            changed = True
        elif isinstance(left, exp.Literal) and left.is_string \
                and not isinstance(right, exp.Literal):
            node.set("expression", nocase(right))
            changed = True
    return tree.sql(dialect=DIALECT) if changed else sql


# =========================================================================== exact match

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


# =========================================================================== hardness

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


# =========================================================================== per example

def _resolve_db(record: dict, base_dir) -> Path | None:
    db = record.get("db_path")
    if not db:
        return None
    path = Path(db)
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path


def _hardness(record: dict) -> str | None:
    meta = record.get("meta") or {}
    if meta.get("hardness") in HARDNESS_LEVELS:
        return meta["hardness"]
    try:
        return spider_hardness(record.get("sql") or "")
    except InputError:
        return None


def evaluate_prediction(record: dict, pred_sql: str, *, base_dir: str | Path | None = None,
                        timeout_s: float = 5.0, max_rows: int = 50_000,
                        case_insensitive: bool | None = None, text_nocase: bool = True,
                        exact_values: bool | None = None, preview_rows: int = 5) -> dict:
    """Score one prediction against one JSONL record (``question, schema, sql, source, id,
    db_path, ...``).

    ``db_path`` is resolved against ``base_dir`` (the JSONL file's folder). Without a database
    file, the query is checked against an empty database built from the record's ``schema``
    (``valid_sql``), and ``match`` is None: there are no rows to compare. ``case_insensitive``
    (default: on for WikiSQL records) runs both queries through :func:`case_insensitive_sql`;
    ``exact_values`` (default: on for Spider records) compares values as Spider's official
    execution evaluation does (see the module docstring).

    Returns a JSON-ready dict: ``id, source, db_id, hardness, gold_sql, pred_sql, match``
    (bool, or None when the gold cannot run), ``exact_match, valid_sql, ordered, pred_error,
    pred_error_kind, gold_error, gold_rows, pred_rows, pred_elapsed_s``.
    """
    gold_sql = record.get("sql") or ""
    pred_sql = pred_sql or ""
    source = record.get("source") or "unknown"
    if case_insensitive is None:
        case_insensitive = str(source).lower().startswith("wikisql")
    if exact_values is None:
        exact_values = str(source).lower().startswith("spider")
    spider = str(source).lower().startswith("spider")
    db_path = _resolve_db(record, base_dir)
    schema = record.get("schema") if isinstance(record.get("schema"), str) else None
    run_gold = case_insensitive_sql(gold_sql) if case_insensitive else gold_sql
    run_pred = case_insensitive_sql(pred_sql) if case_insensitive else pred_sql
    limits = dict(timeout_s=timeout_s, max_rows=max_rows, double_quoted_strings=True if spider else None)

    out: dict[str, Any] = {
        "id": record.get("id"), "source": source, "db_id": record.get("db_id"),
        "hardness": _hardness(record), "gold_sql": gold_sql, "pred_sql": pred_sql,
        "match": None, "exact_match": exact_match(gold_sql, pred_sql), "valid_sql": False,
        "ordered": order_matters(gold_sql), "pred_error": None, "pred_error_kind": None,
        "gold_error": None, "gold_rows": None, "pred_rows": None, "pred_elapsed_s": None,
    }

    gold = try_execute(db_path, run_gold, **limits) if db_path is not None else None
    if gold is not None and (gold.ok or gold.error.kind != "no_database"):
        pred = try_execute(db_path, run_pred, **limits)
    else:
        out["gold_error"] = (str(gold.error) if gold is not None else
                             "no database file: only the schema is known, rows cannot be compared")
        if schema is None:
            # Nothing to run on: a prediction is "valid" when it parses as one statement.
            out["valid_sql"] = _parse_one(pred_sql) is not None
            if not out["valid_sql"]:
                out["pred_error"] = "does not parse as one SQL statement"
                out["pred_error_kind"] = "syntax"
            return out
        # Check the prediction compiles and runs against the schema (an empty database).
        pred = try_execute(None, run_pred, schema_sql=schema, **limits)
        gold = None

    if pred.ok:
        out["valid_sql"] = True
        out["pred_rows"] = pred.result.preview(preview_rows)
        out["pred_elapsed_s"] = round(pred.result.elapsed_s, 6)
    else:
        out["pred_error"], out["pred_error_kind"] = str(pred.error), pred.error.kind
    if gold is None:
        return out
    if not gold.ok:
        out["gold_error"] = str(gold.error)
        return out
    out["gold_rows"] = gold.result.preview(preview_rows)
    out["match"] = pred.ok and results_match(gold.result.rows, pred.result.rows,
                                             ordered=out["ordered"], text_nocase=text_nocase,
                                             exact_values=exact_values)
    return out


# =========================================================================== summary

def _stats(results: list[dict]) -> dict:
    n = len(results)
    scored = [r for r in results if r.get("match") is not None]
    return {
        "n": n,
        "n_scored": len(scored),
        "execution_accuracy": (sum(bool(r["match"]) for r in scored) / len(scored))
        if scored else None,
        "exact_match": sum(bool(r.get("exact_match")) for r in results) / n if n else None,
        "valid_sql_rate": sum(bool(r.get("valid_sql")) for r in results) / n if n else None,
        "n_gold_errors": sum(r.get("gold_error") is not None for r in results),
    }


def summarize(results: Iterable[dict]) -> dict:
    """Totals over :func:`evaluate_prediction` results, overall and by ``source`` and by
    ``hardness``. ``execution_accuracy`` is over the examples whose gold SQL ran
    (``n_scored``); exact match and valid-SQL rate are over all ``n``."""
    results = list(results)
    summary = _stats(results)
    summary["pred_error_kinds"] = dict(Counter(r["pred_error_kind"] for r in results
                                               if r.get("pred_error_kind")))
    by_source: dict[str, list] = defaultdict(list)
    by_hardness: dict[str, list] = defaultdict(list)
    for r in results:
        by_source[str(r.get("source") or "unknown")].append(r)
        by_hardness[r.get("hardness") or "unknown"].append(r)
    summary["by_source"] = {k: _stats(v) for k, v in sorted(by_source.items())}
    order = {h: i for i, h in enumerate(HARDNESS_LEVELS)}
    summary["by_hardness"] = {k: _stats(by_hardness[k])
                              for k in sorted(by_hardness, key=lambda h: (order.get(h, 99), h))}
    return summary


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def format_summary(summary: dict) -> str:
    """:func:`summarize`'s result as an aligned text table, one line per group."""
    rows = [("all", summary)]
    if len(summary.get("by_source", {})) > 1:
        rows += [(f"source={k}", v) for k, v in summary["by_source"].items()]
    elif summary.get("by_source"):
        rows[0] = (f"all ({next(iter(summary['by_source']))})", summary)
    hard = summary.get("by_hardness", {})
    if set(hard) - {"unknown"}:
        rows += [(f"hardness={k}", v) for k, v in hard.items()]
    header = ("group", "n", "scored", "exec acc", "exact", "valid SQL", "gold err")
    table = [header] + [(name, str(s["n"]), str(s["n_scored"]), _pct(s["execution_accuracy"]),
                         _pct(s["exact_match"]), _pct(s["valid_sql_rate"]),
                         str(s["n_gold_errors"])) for name, s in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))) for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    kinds = summary.get("pred_error_kinds") or {}
    if kinds:
        lines.append("prediction errors: " + ", ".join(f"{k} {v}" for k, v in
                                                       sorted(kinds.items(), key=lambda x: -x[1])))
    return "\n".join(lines)
