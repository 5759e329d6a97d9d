"""Result comparison (:func:`results_match`), whether the gold query orders its rows
(:func:`order_matters`), and WikiSQL's case rule (:func:`case_insensitive_sql`).

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

"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from typing import Any, Iterable, Sequence

from sqlglot import exp

from ..sqlexec import CASEFOLD_COLLATION
from .parsing import _COMPARISONS, _NUMBER, DIALECT, _parse_one

REL_TOL = 1e-6
ABS_TOL = 1e-9
MAX_PERMUTATIONS = 720  # 6! : every order of up to six interchangeable columns


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
