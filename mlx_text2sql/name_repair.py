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

Two repairs mend a column that exists, but not where the query looks for it:

- **qualifier**: ``T2.total`` where T2's table has no ``total`` but exactly one other table of
  the same SELECT has it becomes ``T1.total`` (before any similarity is tried);
- **join**: a column no table of its SELECT has (nor a name similar enough, by the rules
  above), whose exact name exists in other tables of which exactly one is linked to a table of
  the SELECT, by exactly one foreign key, gets that table joined on that key
  (``SELECT title FROM albums WHERE name = ...`` with ``albums.artist_id -> artists.id`` and only
  ``artists`` holding ``name``: ``... JOIN artists AS T2 ON albums.artist_id = T2.id WHERE
  T2.name = ...``); the SELECT's unqualified columns that the new table also has are qualified
  with their own table, so none becomes ambiguous. A SELECT with an unqualified ``*`` is left
  alone (the join would change its columns). The keys are the database's declared foreign keys.

Neither touches a column in a join's ON clause: there a qualifier that looks wrong is usually a
misspelt key of the right table (``T2.invoice_id`` for ``T2.id``), which similarity mends, and
moving it would compare a column with itself. A third repair mends the ON clause itself:

- **key**: ``JOIN t AS T2 ON a = b`` where ``a`` or ``b`` is still a column its table lacks
  (after the repairs above) is joined instead on the one declared foreign key that links ``t``
  to a table joined before it (``ON T1.class_section = T2.class_section`` -> ``ON T1.CRS_CODE =
  T2.CRS_CODE``).

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
    kind: str      # "table", "column" (renamed), "qualifier" (re-qualified), "join" (its table
                   # joined) or "key" (a join's ON condition replaced by the foreign key)
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


def read_foreign_keys(db_path: str | Path) -> list[tuple[str, str, str, str]]:
    """The declared foreign keys of a SQLite file as ``(table, column, referenced table,
    referenced column)``, names as the tables spell them (keys naming a table or column the
    file lacks left out), from :func:`~mlx_text2sql.sources.databases.tables_from_database`.
    Empty when the file cannot be read."""
    from .sources.databases import tables_from_database

    try:
        tables = tables_from_database(db_path, sample_rows=0)
    except sqlite3.Error:
        return []
    by_fold = {t.name.casefold(): t for t in tables}
    spelt = {t.name: {c.name.casefold(): c.name for c in t.columns} for t in tables}
    keys = []
    for t in tables:
        for frm, ref_name, to in t.foreign_keys:
            ref = by_fold.get(str(ref_name).casefold())
            if ref is None or frm.casefold() not in spelt[t.name] or str(to).casefold() not in spelt[ref.name]:
                continue
            keys.append((t.name, spelt[t.name][frm.casefold()], ref.name, spelt[ref.name][str(to).casefold()]))
    return list(dict.fromkeys(keys))


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


def fix_names(sql: str, schema: dict[str, list[str]], question: str = "",
              foreign_keys: list[tuple[str, str, str, str]] | tuple = ()) -> tuple[str, list[NameFix]]:
    """``sql`` with unknown table and column names replaced by the database's names they most
    plausibly mean, columns re-qualified or their table joined on a foreign key (module
    docstring), and the fixes made. SQL that does not parse, or names nothing unknown, is
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
    outputs = {a.alias.casefold() for a in tree.find_all(exp.Alias) if a.alias}
    grounding = _Grounding(tree, schema, by_fold, cols_of, foreign_keys)

    def in_join(col) -> bool:  # a join's ON clause keeps its qualifiers: T1.id = T2.id
        return col.find_ancestor(exp.Join) is not None

    for col in list(tree.find_all(exp.Column)):
        if isinstance(col.this, exp.Star) or not col.name:
            continue
        name = col.name
        if col.table:
            table = owner.get(col.table.casefold())
            if table is None or name.casefold() in cols_of[table]:
                continue
            fix = grounding.requalify(col) if not in_join(col) else None
            if fix is not None:
                fixes.append(fix)
                continue
            candidates = [(table, c) for c in schema[table]]
        else:
            read = list(dict.fromkeys(owner.values()))  # the tables the query reads
            if name.casefold() in outputs or any(name.casefold() in cols_of[t] for t in read):
                continue
            candidates = [(t, c) for t in read for c in schema[t]]
        found, score = best_name(name, candidates, qwords) if candidates else (None, 0.0)
        if found is None:
            fix = grounding.join(col) if not in_join(col) else None
            if fix is not None:
                fixes.append(fix)
                owner[fix.table.casefold()] = fix.table
            continue
        new = found[1]
        owners = {t for t, c in candidates if c == new}
        if len(owners) != 1 and not col.table:
            continue  # the same column in two of the query's tables: which one is unclear
        col.set("this", exp.to_identifier(new, quoted=True))
        fixes.append(NameFix("column", next(iter(owners)), name, new, score))

    for join in list(tree.find_all(exp.Join)):
        fix = grounding.rekey(join)
        if fix is not None:
            fixes.append(fix)

    if not fixes:
        return sql, []
    return tree.sql(dialect="sqlite"), fixes


class _Grounding:
    """The qualifier, join and key repairs of :func:`fix_names` over one parsed query."""

    def __init__(self, tree, schema, by_fold, cols_of, foreign_keys):
        self.tree, self.schema, self.by_fold, self.cols_of = tree, schema, by_fold, cols_of
        self.keys = [k for k in foreign_keys if k[0] in schema and k[2] in schema]

    def _links(self, mine: str, other: str) -> list[tuple[str, str]]:
        """``(column of mine, column of other)`` of each foreign key between the two tables,
        either way round."""
        out = []
        for a, ac, b, bc in self.keys:
            if a == mine and b == other:
                out.append((ac, bc))
            elif a == other and b == mine:
                out.append((bc, ac))
        return out

    @staticmethod
    def _equal(q1: str, c1: str, q2: str, c2: str, quote_q2: bool = False):
        """``q1."c1" = q2."c2"``, the condition a repaired join is on."""
        from sqlglot import exp

        return exp.EQ(this=exp.Column(this=exp.to_identifier(c1, quoted=True), table=exp.to_identifier(q1)),
                      expression=exp.Column(this=exp.to_identifier(c2, quoted=True),
                                            table=exp.to_identifier(q2, quoted=quote_q2 or None)))

    def _scope(self, col):
        """The SELECT that reads ``col`` and its tables as ``[(qualifier, database table)]``
        (the alias, else the name as written); None outside a plain SELECT."""
        from sqlglot import exp

        select = col.find_ancestor(exp.Select)
        source = None if select is None else select.args.get("from_") or select.args.get("from")
        if source is None:  # ("from_" in sqlglot >= 28, "from" before)
            return None, []
        nodes = [source.this] + [j.this for j in select.args.get("joins") or []]
        tables = []
        for t in nodes:
            real = self.by_fold.get(t.name.casefold()) if isinstance(t, exp.Table) else None
            if real is not None:
                tables.append((t.alias or t.name, real))
        return select, tables

    def _known(self, col, tables) -> bool:
        """Whether ``col`` can name a column SQLite finds: one of its qualifier's table (an
        alias of this SELECT or an outer one), or unqualified, one of any table the query
        reads (a correlated subquery may read the outer query's columns)."""
        from sqlglot import exp

        name = col.name.casefold()
        if col.table:
            real = next((r for q, r in tables if q.casefold() == col.table.casefold()), None)
            if real is None:
                real = next((self.by_fold.get(t.name.casefold()) for t in self.tree.find_all(exp.Table)
                             if (t.alias or t.name).casefold() == col.table.casefold()), None)
            return real is None or name in self.cols_of[real]
        return any(name in self.cols_of[r] for r in {self.by_fold.get(t.name.casefold())
                                                     for t in self.tree.find_all(exp.Table)} if r)

    def rekey(self, join) -> NameFix | None:
        """A join whose ``ON a = b`` names a column its table lacks, joined instead on the one
        foreign key that links its table to a table joined before it."""
        from sqlglot import exp

        on = join.args.get("on")
        table = join.this
        if not (isinstance(on, exp.EQ) and isinstance(on.this, exp.Column)
                and isinstance(on.expression, exp.Column) and isinstance(table, exp.Table)):
            return None
        select, tables = self._scope(on.this)
        if select is None or not any(j is join for j in select.args.get("joins") or []):
            return None
        mine = (table.alias or table.name, self.by_fold.get(table.name.casefold()))
        if mine[1] is None:
            return None
        before = tables[:next(i for i, (q, _) in enumerate(tables) if q == mine[0])]
        if all(self._known(c, tables) for c in (on.this, on.expression)):
            return None
        links = list(dict.fromkeys((q, theirs, my) for q, real in before
                                   for theirs, my in self._links(real, mine[1])))
        if len(links) != 1:
            return None
        q, their_col, my_col = links[0]
        old = on.sql(dialect="sqlite")
        new = self._equal(q, their_col, mine[0], my_col)
        join.set("on", new)
        return NameFix("key", mine[1], old, new.sql(dialect="sqlite"), 1.0)

    def requalify(self, col) -> NameFix | None:
        """``col`` (qualified, its table lacks it) qualified by the one other table of its
        SELECT that has it."""
        from sqlglot import exp

        _, tables = self._scope(col)
        name = col.name.casefold()
        holders = {q for q, real in tables if name in self.cols_of[real]
                   and q.casefold() != col.table.casefold()}
        if len(holders) != 1:
            return None
        q = holders.pop()
        real = next(r for qq, r in tables if qq == q)
        old = f"{col.table}.{col.name}"
        col.set("table", exp.to_identifier(q))
        return NameFix("qualifier", real, old, f"{q}.{col.name}", 1.0)

    def join(self, col) -> NameFix | None:
        """``col``'s table joined to its SELECT on the one foreign key that links it there,
        when exactly one table outside the SELECT has ``col``'s name."""
        from sqlglot import exp

        select, tables = self._scope(col)
        if select is None or not tables or any(
                isinstance(e, exp.Star) or (isinstance(e, exp.Column) and isinstance(e.this, exp.Star)
                                            and not e.table)
                for e in select.expressions):
            return None
        name = col.name.casefold()
        inside = {real for _, real in tables}
        if any(name in self.cols_of[real] for real in inside):
            return None
        holders = [t for t in self.schema if t not in inside and name in self.cols_of[t]]
        links = list(dict.fromkeys((u, q, own, new) for u in holders for q, real in tables
                                   for own, new in self._links(real, u)))
        if len(links) != 1:
            return None
        u, q, own_col, new_col = links[0]
        aliased = any(qq.casefold() != real.casefold() for qq, real in tables)
        taken = {t.alias.casefold() for t in self.tree.find_all(exp.Table) if t.alias}
        taken |= {t.name.casefold() for t in self.tree.find_all(exp.Table)}
        alias = None
        if aliased:
            alias = next(f"T{i}" for i in range(1, 100) if f"t{i}" not in taken)
        new_q = alias or u
        # Unqualified columns of this SELECT that the new table also has keep their table.
        for other in select.find_all(exp.Column):
            if other is col or other.table or other.find_ancestor(exp.Select) is not select:
                continue
            n = other.name.casefold()
            if isinstance(other.this, exp.Star) or n not in self.cols_of[u]:
                continue
            mine = [qq for qq, real in tables if n in self.cols_of[real]]
            if len(mine) == 1:
                other.set("table", exp.to_identifier(mine[0]))
        table = exp.Table(this=exp.to_identifier(u, quoted=True))
        if alias:
            table.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
        select.append("joins", exp.Join(this=table, on=self._equal(q, own_col, new_q, new_col, quote_q2=not alias)))
        old = f"{col.table}.{col.name}" if col.table else col.name
        col.set("table", exp.to_identifier(new_q, quoted=not alias))
        return NameFix("join", u, old, f"{new_q}.{col.name}", 1.0)
