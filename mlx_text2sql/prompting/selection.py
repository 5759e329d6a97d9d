"""Schema selection: the tables of a multi-table database that a question needs.

A Spider database has 2-26 tables, and a prompt that shows all of them is mostly tables the
question does not use: long to read for a small model, slow to prefill. This module picks the
tables from the **question and the database alone** (never a gold query), the same way for
training records, evaluation records and a user's own SQLite file, so the prompt a model is
trained on is the prompt it is asked with.

How a table is scored (plain and predictable):

* words of the question (lower-cased, stemmed, stop words dropped) found in the table's name
  (weight 3) and in its column names (weight 1), each word weighted by how rare it is among the
  database's tables (a column called ``name`` in every table says little);
* cells of the table that the question names (the value hints of :mod:`mlx_text2sql.hints`:
  weight 2 each).

The ``max_tables`` best tables that score at all are kept (at least one: the best), then every
table on a shortest foreign-key path between two kept tables (a question about students and
courses needs the enrolment table that joins them), then tables are listed in the database's
order. A database of at most ``keep_all_up_to`` tables is shown whole. Columns of a kept table
are all kept, so the columns a question needs survive whenever its tables do.

For training records :func:`training_tables` adds the tables the gold query uses to the
selection (a training prompt must make its answer possible); the selection itself, with its
distractor tables, is the same as at inference.

Pure Python; no MLX import.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

from ..example import Table

DEFAULT_MAX_TABLES = 4
DEFAULT_KEEP_ALL_UP_TO = 3
# weights of a question word found in a table name, a column name, and of a matched cell
NAME_WEIGHT = 3.0
COLUMN_WEIGHT = 1.0
VALUE_WEIGHT = 2.0
# longest foreign-key path (in joins) added between two kept tables
MAX_PATH_JOINS = 3

_STOPWORDS = frozenset("""
a an the of in on at to for from by with and or not no is are was were be been being has have
had do does did what which who whom whose when where why how all any each every both either
this that these those there their its it they them he she his her we our you your i me my
as than then also only just very more most less least many much some such same other than
list show give find return tell get display name names number numbers count total
""".split())

_WORD = re.compile(r"[a-z0-9]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def words(text: str) -> list[str]:
    """Lower-cased word pieces; ``camelCase`` and ``snake_case`` split into their parts."""
    return _WORD.findall(_CAMEL.sub(" ", str(text)).lower())


def stem(word: str) -> str:
    """A matching key that is the same for a word's singular and plural and a few verb forms:
    "singers"/"singer", "cities"/"city", "classes"/"class", "courses"/"course". Keys are only
    compared with each other (schema names and questions inflect the same few ways)."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    for suffix in ("ing", "ed"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            word = word[: -len(suffix)]
            break
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    return word


def question_stems(question: str) -> set[str]:
    return {stem(w) for w in words(question) if w not in _STOPWORDS and not w.isdigit()}


def _stems(text: str) -> set[str]:
    return {stem(w) for w in words(text) if not w.isdigit()}


@dataclass
class Selection:
    """The tables kept (database order), their scores, and why, for logs and reports."""

    tables: list[str]
    scores: dict[str, float] = field(default_factory=dict)
    bridges: list[str] = field(default_factory=list)
    whole: bool = False

    @property
    def reason(self) -> str:
        if self.whole:
            return f"all {len(self.tables)} tables"
        text = ", ".join(self.tables)
        if self.bridges:
            text += f" (joined through {', '.join(self.bridges)})"
        return text


def score_tables(question: str, tables: Sequence[Table],
                 value_tables: Iterable[str] = ()) -> dict[str, float]:
    """Each table's score for ``question`` (see the module docstring). ``value_tables`` names
    the table of each cell the question mentions (one entry per matched cell)."""
    q = question_stems(question)
    name_sets = {t.name: _stems(t.name) - {"table"} for t in tables}
    col_sets = {t.name: [_stems(c.name) for c in t.columns] for t in tables}
    n = max(1, len(tables))
    df: dict[str, int] = {}
    for t in tables:
        seen = set(name_sets[t.name]).union(*col_sets[t.name]) if col_sets[t.name] else set(name_sets[t.name])
        for w in seen:
            df[w] = df.get(w, 0) + 1

    def weight(w: str) -> float:
        return math.log(1.0 + n / df.get(w, 1))

    scores = {}
    for t in tables:
        s = NAME_WEIGHT * sum(weight(w) for w in q & name_sets[t.name])
        col_words = set().union(*col_sets[t.name]) if col_sets[t.name] else set()
        s += COLUMN_WEIGHT * sum(weight(w) for w in q & (col_words - name_sets[t.name]))
        scores[t.name] = s
    lower = {t.name.lower(): t.name for t in tables}
    for name in value_tables:
        key = lower.get(str(name).lower())
        if key is not None:
            scores[key] += VALUE_WEIGHT
    return scores


def _graph(tables: Sequence[Table]) -> dict[str, set[str]]:
    """Undirected foreign-key graph over table names (case-insensitive references resolved)."""
    lower = {t.name.lower(): t.name for t in tables}
    g: dict[str, set[str]] = {t.name: set() for t in tables}
    for t in tables:
        for _, ref, _ in t.foreign_keys:
            other = lower.get(str(ref).lower())
            if other is not None and other != t.name:
                g[t.name].add(other)
                g[other].add(t.name)
    return g


def _path(g: dict[str, set[str]], a: str, b: str, max_joins: int) -> list[str] | None:
    """A shortest path from ``a`` to ``b`` (both included), or None beyond ``max_joins``."""
    prev = {a: None}
    todo = deque([(a, 0)])
    while todo:
        node, d = todo.popleft()
        if node == b:
            path = [b]
            while prev[path[-1]] is not None:
                path.append(prev[path[-1]])
            return path[::-1]
        if d >= max_joins:
            continue
        for nxt in sorted(g[node]):
            if nxt not in prev:
                prev[nxt] = node
                todo.append((nxt, d + 1))
    return None


def connect(tables: Sequence[Table], keep: Iterable[str], max_joins: int = MAX_PATH_JOINS) -> list[str]:
    """Tables (not already kept) on shortest foreign-key paths between kept tables."""
    g = _graph(tables)
    kept = [k for k in dict.fromkeys(keep) if k in g]
    added: list[str] = []
    for i, a in enumerate(kept):
        for b in kept[i + 1:]:
            path = _path(g, a, b, max_joins)
            for node in path or []:
                if node not in kept and node not in added:
                    added.append(node)
    return added


def select_tables(question: str, tables: Sequence[Table], value_tables: Iterable[str] = (), *,
                  max_tables: int = DEFAULT_MAX_TABLES,
                  keep_all_up_to: int = DEFAULT_KEEP_ALL_UP_TO) -> Selection:
    """The tables to show for ``question`` (see the module docstring)."""
    names = [t.name for t in tables]
    if len(tables) <= keep_all_up_to:
        return Selection(names, whole=True)
    scores = score_tables(question, tables, value_tables)
    ranked = sorted(names, key=lambda n: (-scores[n], names.index(n)))
    keep = [n for n in ranked if scores[n] > 0][:max_tables] or ranked[:1]
    bridges = connect(tables, keep)
    chosen = set(keep) | set(bridges)
    return Selection([n for n in names if n in chosen], scores, [n for n in names if n in bridges])


def training_tables(selection: Selection, tables: Sequence[Table], gold: Iterable[str]) -> list[str]:
    """The selection plus the gold query's tables (and the paths joining them to it): what a
    training record shows. Only training records may use the gold query."""
    names = [t.name for t in tables]
    lower = {n.lower(): n for n in names}
    need = [lower[g.lower()] for g in gold if g.lower() in lower]
    keep = list(dict.fromkeys(list(selection.tables) + need))
    keep += [b for b in connect(tables, keep) if b not in keep]
    return [n for n in names if n in set(keep)]


def prune(tables: Sequence[Table], keep: Iterable[str]) -> list[Table]:
    """The kept tables in their order, with foreign keys into dropped tables removed."""
    keep_set = {k.lower() for k in keep}
    out = []
    for t in tables:
        if t.name.lower() not in keep_set:
            continue
        fks = [fk for fk in t.foreign_keys if str(fk[1]).lower() in keep_set]
        out.append(t if len(fks) == len(t.foreign_keys) else replace(t, foreign_keys=fks))
    return out


def recall(selected: Iterable[str], gold: Iterable[str]) -> bool:
    """Whether every gold table survived the selection (case-insensitive)."""
    sel = {s.lower() for s in selected}
    return all(g.lower() in sel for g in gold)


def select_from_database(db_path, question: str, *, max_tables: int = DEFAULT_MAX_TABLES,
                         keep_all_up_to: int = DEFAULT_KEEP_ALL_UP_TO, max_hints: int | None = None,
                         values=None) -> Selection:
    """:func:`select_tables` over a SQLite file's tables (and foreign keys), with the cells
    the question names found by a :class:`~mlx_text2sql.hints.ValueIndex` (``values``: one
    to reuse, else one is opened and closed here): what ``generate --db`` shows an adapter
    trained on ``convert --select-tables`` records."""
    from ..hints import DEFAULT_MAX_HINTS, ValueIndex
    from ..schema_db import read_tables

    tables = read_tables(db_path, None, 0)
    if len(tables) <= keep_all_up_to:
        return Selection([t.name for t in tables], whole=True)
    own = values is None
    index = ValueIndex(db_path) if own else values
    try:
        cells = [h.table for h in index.hints(question, [t.name for t in tables],
                                              max_hints or DEFAULT_MAX_HINTS)]
    finally:
        if own:
            index.close()
    return select_tables(question, tables, cells, max_tables=max_tables, keep_all_up_to=keep_all_up_to)
