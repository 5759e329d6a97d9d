"""Name repair: a predicted table or column the database does not have gets the one name of the
database it most plausibly means.

Small models write the column they expect rather than the one the schema shows: ``name`` for
``singer_name``, ``student`` for ``students``, ``T2.city`` where the table spells it ``City_Town``.
SQLite rejects such a query ("no such column"). This module resolves each unknown name against
the database's own names, the way schema-linking systems do, and rewrites only those:

- an unknown table becomes the most similar table of the database;
- an unknown column qualified by a table or alias becomes the most similar column of that table;
  an unqualified one, the most similar column of the tables the query reads;
- similarity is the better of two scores over lower-case singular words: character similarity
  (difflib ratio, with ``_`` and spaces ignored) and word containment (every word of the predicted name is a word of the
  candidate, scored by the share of the candidate's words it covers); a column is also compared
  with the predicted name less its table's words (``singer_name`` in ``singer``: ``name``); a
  candidate's words that the question holds break ties;
- a name is replaced only when its best candidate scores at least ``MIN_SCORE`` and beats the
  second by ``MARGIN``; names the database has (as SQLite compares them, case-folded), output
  aliases (``AS total``), ``*`` and names of unknown tables' columns are left alone.

Never consults a gold query: the database and the question are all it reads. Opt-in
(``--fix-names`` in generate and evaluate). Pure Python (sqlglot, sqlite3); no MLX import.
"""

from __future__ import annotations

import difflib
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

MIN_SCORE = 0.8
MARGIN = 0.05
QUESTION_BONUS = 0.06  # per word of a candidate that the question holds (tie-breaker)

_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class NameFix:
    kind: str      # "table" or "column"
    table: str     # the table the new name belongs to
    old: str
    new: str
    score: float


def read_schema(db_path: str | Path) -> dict[str, list[str]]:
    """``{table: [columns]}`` of a SQLite file, read-only (empty when it cannot be read)."""
    from .sources.common import connect_readonly

    from .prompts import quote_ident

    try:
        conn = connect_readonly(Path(db_path))
    except sqlite3.Error:
        return {}
    try:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%'")]
        return {t: [r[1] for r in conn.execute(f"PRAGMA table_info({quote_ident(t)})")] for t in names}
    except sqlite3.Error:
        return {}
    finally:
        conn.close()


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _words(name: str) -> list[str]:
    """Lower-case singular words: camelCase and snake_case alike ("StuID" -> stu, id;
    "song_names" -> song, name)."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)
    return [_singular(w) for w in _WORD.findall(spaced.casefold())]


def similarity(predicted: str, candidate: str) -> float:
    """How plausibly ``predicted`` means ``candidate`` (0-1)."""
    a, b = "".join(_words(predicted)), "".join(_words(candidate))
    if not a or not b:
        return 0.0
    ratio = difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()
    wa, wb = _words(predicted), _words(candidate)
    contained = 0.0
    if wa and set(wa) <= set(wb):
        contained = 0.75 + 0.25 * len(set(wa)) / len(set(wb))
    return max(ratio, contained)


def _without_table(predicted: str, table: str | None) -> str:
    """``predicted`` less the words of its table's name (``singer_name`` in ``singer``: ``name``)."""
    if not table:
        return ""
    own = set(_words(table))
    rest = [w for w in _words(predicted) if w not in own]
    return "_".join(rest) if rest and len(rest) < len(_words(predicted)) else ""


def best_name(predicted: str, candidates: list[tuple[str | None, str]],
              question_words: set[str]) -> tuple[tuple[str | None, str] | None, float]:
    """The ``(table, name)`` candidate ``predicted`` most plausibly means, when it is clearly
    the best. A column is also compared without the words of its own table's name."""
    scored = []
    for table, c in dict.fromkeys(candidates):
        s = similarity(predicted, c)
        short = _without_table(predicted, table)
        if short:
            s = max(s, similarity(short, c))
        if s <= 0:
            continue
        bonus = QUESTION_BONUS * sum(1 for w in set(_words(c)) if w in question_words)
        scored.append((s + bonus, s, (table, c)))
    if not scored:
        return None, 0.0
    scored.sort(key=lambda x: (-x[0], x[2][1], x[2][0] or ""))
    top, raw, best = scored[0]
    if raw < MIN_SCORE:
        return None, raw
    if len(scored) > 1 and scored[1][2][1] != best[1] and scored[1][0] > top - MARGIN:
        return None, raw
    return best, raw


def parse_query(sql: str):
    """``sql`` as a sqlglot tree (SQLite dialect), or None when it does not parse."""
    import sqlglot

    try:
        return sqlglot.parse_one(sql, read="sqlite")
    except Exception:  # noqa: BLE001 - unparseable SQL is left for the executor to report
        return None


def fix_names(sql: str, schema: dict[str, list[str]], question: str = "") -> tuple[str, list[NameFix]]:
    """``sql`` with unknown table and column names replaced by the database's names they most
    plausibly mean, and the fixes made. SQL that does not parse, or names nothing unknown, is
    returned unchanged (character for character)."""
    from sqlglot import exp

    tree = parse_query(sql) if schema else None
    if tree is None:
        return sql, []
    qwords = set(_words(question))
    by_fold = {t.casefold(): t for t in schema}
    cols_of = {t: {c.casefold() for c in cols} for t, cols in schema.items()}
    fixes: list[NameFix] = []

    ctes = {c.alias_or_name.casefold() for c in tree.find_all(exp.CTE)}
    for t in tree.find_all(exp.Table):
        name = t.name
        if not name or name.casefold() in by_fold or name.casefold() in ctes:
            continue
        found, score = best_name(name, [(None, t) for t in schema], qwords)
        if found is not None:
            new = found[1]
            t.set("this", exp.to_identifier(new, quoted=True))
            fixes.append(NameFix("table", new, name, new, score))

    owner: dict[str, str] = {}  # alias or table name (case-folded) -> database table
    for t in tree.find_all(exp.Table):
        real = by_fold.get(t.name.casefold())
        if real is None:
            continue
        owner[real.casefold()] = real
        if t.alias:
            owner[t.alias.casefold()] = real
    read = list(dict.fromkeys(owner.values()))
    outputs = {a.alias.casefold() for a in tree.find_all(exp.Alias) if a.alias}

    for col in tree.find_all(exp.Column):
        if isinstance(col.this, exp.Star) or not col.name:
            continue
        name = col.name
        if col.table:
            table = owner.get(col.table.casefold())
            if table is None or name.casefold() in cols_of[table]:
                continue
            candidates = [(table, c) for c in schema[table]]
        else:
            if name.casefold() in outputs or any(name.casefold() in cols_of[t] for t in read):
                continue
            candidates = [(t, c) for t in read for c in schema[t]]
        if not candidates:
            continue
        found, score = best_name(name, candidates, qwords)
        if found is None:
            continue
        new = found[1]
        owners = {t for t, c in candidates if c == new}
        if len(owners) != 1 and not col.table:
            continue  # the same column in two of the query's tables: which one is unclear
        col.set("this", exp.to_identifier(new, quoted=True))
        fixes.append(NameFix("column", next(iter(owners)), name, new, score))

    if not fixes:
        return sql, []
    return tree.sql(dialect="sqlite"), fixes
