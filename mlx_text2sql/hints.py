"""Value hints: the database cells a question mentions, named with their column.

A small model's commonest Text2SQL mistakes are schema linking (which column holds "Hartford"?)
and copying a value (``'Hartford'`` typed as ``'hatchest'``). Both get easier when the prompt
says which cells of the database the question names, the "anchor text" of BRIDGE (Lin et al.,
2020) and the value retrieval of CodeS (Li et al., 2024). This module finds them by reading the
database itself, so the same hints come out at conversion time (for training records) and at
``generate --db`` time (for a user's own database)::

    Question: What school did the forward whose number is 10 belong to?
    Values: "Position" = 'Forward'; "No.(s)" = '10'

Matching is plain and predictable: a cell matches when its text (case-folded, whitespace
collapsed) occurs in the question as whole words; a match inside a longer match is dropped
("Ohio" inside "Springfield, Ohio"); hints are listed in question order, at most ``max_hints``.
Values are written as SQL literals the way the column stores them (text quoted, numbers not).
Short numbers (under 4 characters) are not matched in key columns (primary and foreign keys,
names ending in "id"): "8 cylinders" is about a cylinder count, not about every row whose id is
8; a long one ("geo ID of 3807116660") still is.

Pure Python (sqlite3 only); no MLX import.
"""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

DEFAULT_MAX_HINTS = 8
# distinct values read per column, and the longest cell text considered
MAX_VALUES_PER_COLUMN = 20_000
MAX_VALUE_CHARS = 80

_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Case-folded text with runs of whitespace as one space."""
    return _SPACES.sub(" ", str(text).casefold()).strip()


def sql_literal(value: Any) -> str:
    """A cell as a SQLite literal: numbers bare (21.0 as 21), text single-quoted."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def cell_text(value: Any) -> str:
    """The text a question would use for a cell (21.0 reads as "21")."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class Hint:
    table: str
    column: str
    value: Any
    start: int  # where the match begins in the normalized question
    end: int

    def render(self, qualify: bool) -> str:
        from .prompts import quote_ident

        col = quote_ident(self.column)
        if qualify:
            col = quote_ident(self.table) + "." + col
        return f"{col} = {sql_literal(self.value)}"


def _matchable(text: str) -> bool:
    """Cells worth matching: not empty, not too long, and not a lone letter or symbol (a cell
    "a" would match the article in every question)."""
    if not text or len(text) > MAX_VALUE_CHARS:
        return False
    if len(text) == 1 and not text.isdigit():
        return False
    return any(ch.isalnum() for ch in text)


def find_spans(question: str, value: str) -> list[tuple[int, int]]:
    """Where ``value`` (normalized) occurs in ``question`` (normalized) as whole words."""
    spans = []
    start = question.find(value)
    while start >= 0:
        end = start + len(value)
        before_ok = start == 0 or not (question[start - 1].isalnum() and value[0].isalnum())
        after_ok = end == len(question) or not (question[end].isalnum() and value[-1].isalnum())
        if before_ok and after_ok:
            spans.append((start, end))
        start = question.find(value, start + 1)
    return spans


def select_hints(candidates: Iterable[Hint], max_hints: int = DEFAULT_MAX_HINTS) -> list[Hint]:
    """Drop matches lying inside a longer match, then keep the first ``max_hints`` in question
    order (longer matches first at one position, then by table, column and cell, so that cells
    differing only in case, such as 'Rain' and 'rain', are chosen the same way in every run)."""
    cands = sorted(set(candidates), key=lambda h: (h.start, -(h.end - h.start), h.table, h.column,
                                                   type(h.value).__name__, cell_text(h.value)))
    kept: list[Hint] = []
    for h in cands:
        inside = any(o.start <= h.start and h.end <= o.end and (o.end - o.start) > (h.end - h.start)
                     for o in cands)
        if not inside:
            kept.append(h)
    seen: set[tuple[str, str, str]] = set()
    out = []
    for h in kept:
        key = (h.table, h.column, normalize(cell_text(h.value)))
        if key in seen:
            continue
        seen.add(key)
        out.append(h)
        if len(out) >= max_hints:
            break
    return out


def hints_from_values(question: str, columns: Iterable[tuple[str, str, Sequence[Any]]],
                      max_hints: int = DEFAULT_MAX_HINTS) -> list[Hint]:
    """Hints from ``(table, column, distinct values)`` triples."""
    q = normalize(question)
    cands = []
    for table, column, values in columns:
        for v in values:
            if v is None:
                continue
            text = normalize(cell_text(v))
            if not _matchable(text) or text not in q:
                continue
            for s, e in find_spans(q, text):
                cands.append(Hint(table, column, v, s, e))
    return select_hints(cands, max_hints)


def render_hints(hints: Sequence[Hint], qualify: bool = False) -> str:
    """The hint line's text ("" when there is none)."""
    return "; ".join(h.render(qualify) for h in hints)


# "id", "Player ID", "stu_id", "CountryId", "ModelID" (not "paid" or "Android")
_ID_NAME = re.compile(r"(?:^|[^A-Za-z])[iI][dD]$|[a-z](?:Id|ID)$")


def _is_number(value: Any) -> bool:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return True
    try:
        float(str(value))
        return True
    except ValueError:
        return False


class ValueIndex:
    """Distinct cell values of one SQLite database, read per table on first use.

    ``hints(question, tables)`` looks only at the tables named (the ones the prompt shows).
    Unknown tables are skipped; a database that cannot be read gives no hints rather than
    failing a whole conversion (the gold check reports broken databases on its own).
    """

    def __init__(self, db_path: str | os.PathLike, max_values: int = MAX_VALUES_PER_COLUMN):
        self.path = Path(db_path)
        self.max_values = max_values
        self._conn: sqlite3.Connection | None = None
        self._tables: dict[str, list[tuple[str, list[Any]]]] = {}
        self.error: str | None = None

    def _connect(self) -> sqlite3.Connection | None:
        if self._conn is None and self.error is None:
            from .sources.common import connect_readonly

            try:
                self._conn = connect_readonly(self.path)
            except sqlite3.Error as e:
                self.error = str(e)
        return self._conn

    def columns(self, table: str) -> list[tuple[str, list[Any]]]:
        """``(column, distinct non-NULL values)`` for each column of ``table``."""
        if table in self._tables:
            return self._tables[table]
        from .prompts import quote_ident

        out: list[tuple[str, list[Any]]] = []
        conn = self._connect()
        if conn is not None:
            try:
                info = conn.execute(f"PRAGMA table_info({quote_ident(table)})").fetchall()
                keys = {r[1] for r in info if r[5]}
                keys |= {r[3] for r in conn.execute(f"PRAGMA foreign_key_list({quote_ident(table)})")}
                for c in (r[1] for r in info):
                    rows = conn.execute(
                        f"SELECT DISTINCT {quote_ident(c)} FROM {quote_ident(table)} "
                        f"WHERE {quote_ident(c)} IS NOT NULL LIMIT {int(self.max_values)}").fetchall()
                    values = [r[0] for r in rows if not isinstance(r[0], bytes)]
                    if c in keys or _ID_NAME.search(c):
                        # key columns: a small number in the question ("8 cylinders") is rarely an id
                        values = [v for v in values if not (_is_number(v) and len(cell_text(v)) < 4)]
                    out.append((c, values))
            except sqlite3.Error:
                out = []
        self._tables[table] = out
        return out

    def hints(self, question: str, tables: Sequence[str],
              max_hints: int = DEFAULT_MAX_HINTS) -> list[Hint]:
        triples = [(t, c, vals) for t in tables for c, vals in self.columns(t)]
        return hints_from_values(question, triples, max_hints)

    def hint_text(self, question: str, tables: Sequence[str],
                  max_hints: int = DEFAULT_MAX_HINTS) -> str:
        return render_hints(self.hints(question, tables, max_hints), qualify=len(tables) > 1)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "ValueIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
