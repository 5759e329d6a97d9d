"""Value repair: a predicted ``column = 'text'`` whose text is no cell of that column, but is
within a few characters of exactly one likely cell, gets that cell's text.

Small models copy values character by character and sometimes slip ('montreal canadas' for
'montreal canadiens', 'kvv' for 'kvtv'); such a query runs and returns nothing. Looking the value
up in the database, as value-aware Text2SQL systems do (e.g. ValueNet), mends the slip without
touching anything the model got right: a literal the question holds word for word, one that
is a cell of its column (compared as
SQLite's NOCASE does, by case-folded text), a literal compared with anything but ``=``, a column
that cannot be resolved to a table of the query, and a near miss with no clear winner are all
left alone. Opt-in (``--fix-values`` in generate and evaluate); evaluate reports the accuracy
with and without it.

Pure Python (sqlglot, sqlite3); no MLX import.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .hints import ValueIndex, cell_text, normalize

MIN_RATIO = 0.8  # similarity (difflib ratio of case-folded text) a replacement needs
MARGIN = 0.05  # and by how much it must beat the second-best cell


@dataclass(frozen=True)
class Fix:
    table: str
    column: str
    old: str
    new: str
    ratio: float


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _tables_of(tree) -> dict[str, str]:
    """alias or name (case-folded) -> table name, for every table the query reads."""
    from sqlglot import exp

    out: dict[str, str] = {}
    for t in tree.find_all(exp.Table):
        name = t.name
        out[name.casefold()] = name
        if t.alias:
            out[t.alias.casefold()] = name
    return out


def _best_cell(value: str, cells: Sequence[str]) -> tuple[str | None, float]:
    """The cell most like ``value`` when it is similar enough and clearly the best."""
    v = normalize(value)
    scored = []
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2(v)
    for c in cells:
        n = normalize(c)
        if not n:
            continue
        matcher.set_seq1(n)
        if matcher.real_quick_ratio() < MIN_RATIO or matcher.quick_ratio() < MIN_RATIO:
            continue
        scored.append((matcher.ratio(), c))
    if not scored:
        return None, 0.0
    scored.sort(key=lambda x: -x[0])
    best_ratio, best = scored[0]
    if best_ratio < MIN_RATIO:
        return None, best_ratio
    if len(scored) > 1 and normalize(scored[1][1]) != normalize(best) and scored[1][0] > best_ratio - MARGIN:
        return None, best_ratio
    return best, best_ratio


def fix_values(sql: str, index: ValueIndex, question: str = "") -> tuple[str, list[Fix]]:
    """``sql`` with near-miss text literals replaced by the cell they were meant to copy, and
    the fixes made. A literal the question holds word for word was copied, not miscopied, and
    is kept (the data may spell it differently: 'twickenham, london' vs 'Twickenham , London').
    SQL that does not parse is returned unchanged."""
    from sqlglot import exp

    from .hints import find_spans
    from .name_repair import parse_query

    tree = parse_query(sql)
    if tree is None:
        return sql, []
    tables = _tables_of(tree)
    q = normalize(question)
    fixes: list[Fix] = []
    for eq in tree.find_all(exp.EQ):
        col, lit = eq.left, eq.right
        if isinstance(col, exp.Literal):
            col, lit = lit, col
        if not (isinstance(col, exp.Column) and isinstance(lit, exp.Literal) and lit.is_string):
            continue
        value = lit.this
        if col.table:
            candidates = [tables.get(col.table.casefold())]
        else:
            candidates = list(dict.fromkeys(tables.values()))
        found = [(t, name, values) for t in dict.fromkeys(candidates) if t is not None
                 for name, values in index.columns(t) if name.casefold() == col.name.casefold()]
        if len(found) != 1:  # unknown, or in two tables: ambiguous
            continue
        owner = found[0][:2]
        cells = [cell_text(v) for v in found[0][2] if isinstance(v, str)]
        if not value or (q and find_spans(q, normalize(value))):
            continue
        folded = {normalize(c) for c in cells}
        if normalize(value) in folded:
            continue
        best, ratio = _best_cell(value, cells)
        if best is not None:
            fixes.append(Fix(owner[0], owner[1], value, best, ratio))
    out = sql
    for f in fixes:
        out = out.replace(_quoted(f.old), _quoted(f.new))
    return out, fixes


class Repairer:
    """Name repair (:func:`mlx_text2sql.name_repair.fix_names`) then value repair
    (:func:`fix_values`) over databases read once each (by path). Names go first: a value is
    looked up in the column the repaired query names."""

    def __init__(self) -> None:
        self._indexes: dict[str, ValueIndex] = {}
        self._names: dict[str, tuple[dict[str, list[str]], list[tuple[str, str, str, str]]]] = {}  # schema, keys

    def fix(self, sql: str, db_path: str | os.PathLike | None, question: str = "", *,
            values: bool = True, names: bool = False) -> tuple[str, list]:
        """``(sql, fixes)``: :class:`~mlx_text2sql.name_repair.NameFix` then :class:`Fix` items."""
        if not sql or db_path is None or not Path(db_path).is_file():
            return sql, []
        key = str(Path(db_path).resolve())
        fixes: list = []
        if names:
            from .name_repair import fix_names

            schema, keys = self.names(db_path)
            sql, named = fix_names(sql, schema, question, keys)
            fixes.extend(named)
        if values:
            if key not in self._indexes:
                self._indexes[key] = ValueIndex(db_path)
            sql, valued = fix_values(sql, self._indexes[key], question)
            fixes.extend(valued)
        return sql, fixes

    def names(self, db_path: str | os.PathLike) -> tuple[dict[str, list[str]], list[tuple[str, str, str, str]]]:
        """A database's ``{table: [columns]}`` and declared foreign keys, read once per file
        (empty when it cannot be read): what name repair and the name constraint know of it."""
        from .name_repair import read_foreign_keys, read_schema

        key = str(Path(db_path).resolve())
        if key not in self._names:
            self._names[key] = read_schema(db_path), read_foreign_keys(db_path)
        return self._names[key]

    def configured(self, *, values: bool, names: bool) -> "ConfiguredRepair":
        """This repairer with its kinds of repair fixed, for callers that call ``fix(sql, db,
        question)``."""
        return ConfiguredRepair(self, values, names)

    def close(self) -> None:
        for index in self._indexes.values():
            index.close()
        self._indexes.clear()
        self._names.clear()


@dataclass(frozen=True)
class ConfiguredRepair:
    """A :class:`Repairer` with ``values`` / ``names`` chosen once."""

    repairer: Repairer
    values: bool
    names: bool

    def fix(self, sql: str, db_path, question: str = "") -> tuple[str, list]:
        return self.repairer.fix(sql, db_path, question, values=self.values, names=self.names)
