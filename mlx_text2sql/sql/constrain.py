"""Schema-constrained decoding: the table and column names a generated query writes must be
names its database has.

A small model often writes a column the schema does not have (``T1.name`` where the table
has ``artist_name``). Name repair (:mod:`mlx_text2sql.name_repair`) guesses afterwards from
spelling; decoding under a :class:`NameConstraint` lets the model itself choose: at every step
the decoder takes the model's most likely token whose text keeps the query a viable prefix, so
a name the database lacks is never finished and the model's next choice among the names that
exist is taken instead.

:class:`NameConstraint` reads the reply as the tokens arrive (:meth:`NameConstraint.step`,
pure and cheap, one piece of text at a time) with SQLite's lexical rules:

- nothing is checked before the query's first ``SELECT`` or ``WITH``, inside quotes
  (strings; a quoted identifier is only noted: a table it names after FROM, a qualifier
  before ``.``), in numbers, or after a ``;`` ends the statement;
- after ``FROM`` / ``JOIN`` (or ``,`` in a FROM clause) a word is a table; the word after
  ``AS``, or after a table there, is an alias and free;
- a word followed by ``.`` is a table or an alias; until the SELECT's FROM clause is read
  also a ``T1``-style alias or a shorthand of a table (a prefix, or its initials), which that
  clause may define; the word after the dot is a column of the qualifier's table when it is
  known (an alias of this SELECT, a table, the one table a shorthand abbreviates), else of any;
- in a join's ``ON`` condition, when the database declares foreign keys (``keys``), the left
  column is one a key links to the table the JOIN adds (or, when it is that table's, to a table
  before it), and the right column one a key links to the left column, where such columns exist;
- any other word is a keyword (:data:`~mlx_text2sql.sql.lexer.KEYWORDS`), a function
  (:data:`FUNCTIONS`), an alias, or a column of some table (not only of the tables the query
  reads: name repair joins the table that has it); a table name alone is none of these;
- an unfinished word must begin an allowed one, and the reply may end only where its last
  word is allowed.

Names compare without case, as SQLite's do. A state is immutable: a candidate token that fails
leaves the row's state as it was.

Pure Python: no MLX import.
"""

from __future__ import annotations

import bisect
import os
import re
import sqlite3
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from .lexer import KEYWORDS

__all__ = ["FUNCTIONS", "NameConstraint", "State", "schema_names"]

# SQLite's core, aggregate and date functions (and CAST's type names), lower case.
FUNCTIONS = frozenset("""
abs avg changes char coalesce count date datetime format glob group_concat hex ifnull iif instr
julianday last_insert_rowid length like likelihood likely lower ltrim max min nullif printf quote
random randomblob replace round rtrim sign soundex sqlite_version strftime string_agg substr
substring sum time timediff total trim typeof unhex unicode unixepoch unlikely upper zeroblob
integer int text real numeric float double varchar boolean blob
""".split())

# A clause keyword that ends a FROM clause (after it a word after a table name is no alias).
_AFTER_FROM = frozenset("where group order having limit on using union intersect except select window".split())
_ALIAS_PREFIX = re.compile(r"t\d*\Z")

_PRE, _SQL, _FREE = 0, 1, 2
_EVERYWHERE = -1  # the SELECT of a WITH table's name: all of them
_KEYWORDS = frozenset(k.lower() for k in KEYWORDS)


@dataclass(frozen=True)
class State:
    """Where a reply stands: ``mode`` (before the query, in it, or past its end), an open
    quote's closing character, the unfinished word, the qualifier it follows, the last
    finished token, and the query's aliases with the SELECT each belongs to."""

    mode: int = _PRE
    quote: str = ""
    qtext: str = ""  # the quoted identifier being read ("..." `...` [...], not '...')
    quote_table: bool = False  # ... and it began where a table is named
    quoted: str | None = None  # the last token was a quoted identifier: its name, lower case
    word: str = ""
    qualifier: str | None = None  # the unfinished word follows "<qualifier>."
    prev: str = ""  # the last finished word (lower case) or punctuation character
    last_table: str = ""  # the last finished word, when it is a table named in a FROM clause
    in_from: bool = False
    expect_table: bool = False  # the next word names a table (after FROM, JOIN, or "," in FROM)
    scopes: tuple[int, ...] = (0,)  # the SELECT each open parenthesis is in (innermost last)
    next_scope: int = 1
    aliases: tuple[tuple[str, str, int], ...] = ()  # (alias, its table or "", its SELECT)
    from_tables: tuple[tuple[str, int], ...] = ()  # (table or "" for another source, its SELECT)
    on: int = 0  # in a join's ON condition: 1 before its left column, 2 after it, 3 after "=", 4 past
    on_left: tuple[str, str] | None = None  # (table, column) of the condition's left side


class NameConstraint:
    """The names one database allows (``schema``: ``{table: [columns]}``, as
    :func:`mlx_text2sql.name_repair.read_schema` reads it); ``start_in_query`` checks from the
    first character instead of from the first ``SELECT`` / ``WITH``."""

    def __init__(self, schema: Mapping[str, Sequence[str]], *, start_in_query: bool = False,
                 keys: Sequence[tuple[str, str, str, str]] = ()):
        self.tables = {t.lower(): sorted({c.lower() for c in cols}) for t, cols in schema.items()}
        self.columns = sorted({c for cols in self.tables.values() for c in cols})
        self._table_list = sorted(self.tables)
        self._column_set = frozenset(self.columns)
        self._plain_words = sorted(_KEYWORDS | FUNCTIONS | self._column_set)
        self._initials: dict[str, set[str]] = {}
        for t in self.tables:
            self._initials.setdefault("".join(p[0] for p in t.split("_") if p), set()).add(t)
        self.start_in_query = start_in_query
        # Declared foreign keys, both ways: (table, column) -> {(table, column)}.
        self.partners: dict[tuple[str, str], set[tuple[str, str]]] = {}
        for t, c, rt, rc in keys:
            a, b = (t.lower(), c.lower()), (rt.lower(), rc.lower())
            self.partners.setdefault(a, set()).add(b)
            self.partners.setdefault(b, set()).add(a)

    def start(self) -> State:
        """The state before the reply's first character."""
        return State(mode=_SQL) if self.start_in_query else State()

    # ----------------------------------------------------------------- checks

    def step(self, state: State, piece: str) -> State | None:
        """The state after ``piece`` of reply text, or None when the text can no longer be a
        query over these names."""
        s: State | None = state
        for ch in piece:
            if s.mode == _FREE:
                return s
            s = self._pre(s, ch) if s.mode == _PRE else self._char(s, ch)
            if s is None:
                return None
        if s.mode == _SQL and s.word and not s.quote and not self._viable_prefix(s):
            return None
        return s

    def can_end(self, state: State) -> bool:
        """Whether the reply may end in ``state`` (its last word, if unfinished, is allowed)."""
        if state.mode != _SQL or state.quote or not state.word:
            return True
        return self._finish_word(state, " ") is not None

    # ----------------------------------------------------------------- lexing

    def _pre(self, s: State, ch: str) -> State:
        """Before the query: words are collected until one is SELECT or WITH."""
        if ch.isalnum() or ch == "_":
            return replace(s, word=s.word + ch)
        first = s.word.lower()
        if first in ("select", "with"):
            return self._char(self._keyword(State(mode=_SQL), first), ch)
        return replace(s, word="")

    def _char(self, s: State, ch: str) -> State | None:
        if s.quote:
            if ch != s.quote:
                return s if s.quote == "'" else replace(s, qtext=s.qtext + ch)
            return replace(s, quote="") if s.quote == "'" else self._close_quoted(s)
        word_char = ch.isalnum() or ch == "_"
        if s.word and (word_char or (ch == "." and s.word[0].isdigit())):
            return replace(s, word=s.word + ch)
        if not s.word and word_char:
            return replace(s, word=ch, quoted=None)
        if s.word:
            s = self._finish_word(s, ch)
            if s is None:
                return None
            if ch == ".":
                return s
        if ch.isspace():
            return s
        if ch == "." and s.quoted is not None:  # "table".column
            return replace(s, qualifier=s.quoted, quoted=None, prev=ch)
        table_position = s.expect_table
        on = s.on
        if on in (2, 3):
            on = 3 if ch == "=" and on == 2 else 4
        s = replace(s, qualifier=None, prev=ch, last_table="", quoted=None,
                    expect_table=ch == "," and s.in_from, on=on)
        if ch in "'\"`[":
            return replace(s, quote="]" if ch == "[" else ch, quote_table=table_position and ch != "'")
        if ch == ";":
            return replace(s, mode=_FREE)
        if ch == "(":
            return replace(s, scopes=s.scopes + s.scopes[-1:])
        if ch == ")":
            return replace(s, scopes=s.scopes[:-1] or (0,))
        return s

    def _close_quoted(self, s: State) -> State:
        """A quoted identifier ends: its name is free, but a table it names counts as a source
        of the FROM clause (and the table of an alias after it), and a name before "." as a
        qualifier."""
        name = s.qtext.lower()
        table_position = s.quote_table
        s = replace(s, quote="", qtext="", quote_table=False, prev=name)
        if table_position:
            table = name if name in self.tables else ""
            return replace(s, last_table=table, from_tables=s.from_tables + ((table, s.scopes[-1]),))
        return replace(s, quoted=name)

    def _finish_word(self, s: State, boundary: str) -> State | None:
        """The state once the unfinished word ends at ``boundary``; None if it is not allowed."""
        w = s.word.lower()
        expect_table = s.expect_table
        s = replace(s, word="", expect_table=False)
        if expect_table:
            if w in self.tables or any(a == w for a, _, _ in s.aliases):
                source = (w if w in self.tables else "", s.scopes[-1])
                return replace(s, prev=w, last_table=w, qualifier=None, from_tables=s.from_tables + (source,))
            return None
        if w[0].isdigit():  # a number
            return replace(s, qualifier=None, prev=w, last_table="")
        if boundary == "." and s.qualifier is None:
            if not self._qualifier_ok(s, w):
                return None
            return replace(s, qualifier=w, prev=w, last_table="")
        if s.qualifier is not None:
            if not _contains(self._columns_after(s, s.qualifier), w):
                return None
            on, left = s.on, s.on_left
            if on == 1:
                table = self._table_of(s, s.qualifier)
                on, left = 2, (table, w) if table is not None else None
            elif on:
                on = 4
            return replace(s, qualifier=None, prev=w, last_table="", on=on, on_left=left)
        if w in _KEYWORDS:
            return self._keyword(s, w)
        if s.on:  # an unqualified name in an ON condition: no key rule applies to it
            s = replace(s, on=4)
        if s.prev in ("as", "with") or s.last_table:  # an alias (or a WITH table) being defined
            scope = _EVERYWHERE if s.prev == "with" else s.scopes[-1]  # a WITH table is seen everywhere
            return replace(s, prev=w, last_table="", aliases=s.aliases + ((w, s.last_table, scope),))
        if any(a == w for a, _, _ in s.aliases):
            return replace(s, prev=w, last_table="")
        if _contains(self._plain_words, w):
            return replace(s, prev=w, last_table="")
        return None

    def _keyword(self, s: State, w: str) -> State:
        in_from, scopes, next_scope = s.in_from, s.scopes, s.next_scope
        if w in ("from", "join"):
            in_from = True
        elif w in _AFTER_FROM:
            in_from = False
        if w == "select":
            scopes = scopes[:-1] + (next_scope,)
            next_scope += 1
        # "t AS x": the table stays known across AS, for the alias after it.
        last_table = s.last_table if w == "as" else ""
        on = 1 if w == "on" else 0  # (after AND in an ON clause: any condition)
        return replace(s, prev=w, last_table=last_table, in_from=in_from, scopes=scopes,
                       next_scope=next_scope, expect_table=w in ("from", "join"), on=on, on_left=None)

    def _qualifier_ok(self, s: State, w: str) -> bool:
        """A word before "." names a table or an alias. Until the SELECT's FROM clause has been
        read it may also be a ``T1``-style alias or a shorthand of a table (a prefix of its
        name, or its initials: ``ab`` for apartment_bookings) that the clause will define; once
        it has, only the clause's tables and aliases (and those of the SELECTs around it)."""
        open_scopes = set(s.scopes) | {_EVERYWHERE}
        if any(a == w and sc in open_scopes for a, _, sc in s.aliases):
            return True
        sources = self._sources(s)
        if sources is not None:
            return w in sources
        return (w in self.tables or _ALIAS_PREFIX.match(w) is not None
                or _has_prefix(self._table_list, w) or w in self._initials)

    def _sources(self, s: State) -> tuple[str, ...] | None:
        """The tables of the FROM clauses of the current SELECT and those around it, once the
        current one has been read (None before, or when a source is no table: a subquery)."""
        open_scopes = set(s.scopes)
        if s.in_from or not any(sc == s.scopes[-1] for _, sc in s.from_tables):
            return None
        tables = tuple(sorted({t for t, sc in s.from_tables if sc in open_scopes}))
        return None if "" in tables else tables

    def _table_of(self, s: State, qualifier: str) -> str | None:
        """The table a qualifier names: an alias of the current SELECT, a table, or the one
        table it is a shorthand of (not a ``T1``-style alias defined later)."""
        scope = s.scopes[-1]
        for alias, table, sc in reversed(s.aliases):
            if alias == qualifier and sc == scope:
                return table or None
        if qualifier in self.tables:
            return qualifier
        if _ALIAS_PREFIX.match(qualifier):
            return None
        short = {t for t in self._table_list if t.startswith(qualifier)} | self._initials.get(qualifier, set())
        return next(iter(short)) if len(short) == 1 else None

    def _columns_after(self, s: State, qualifier: str) -> Sequence[str]:
        """The columns allowed after ``qualifier.``: its table's (any table's when it is not
        known); in a join's ON condition, when the database declares foreign keys, only the
        columns a key links: on the left, to the table the JOIN adds (or, for that table's own
        columns, to the tables before it); on the right, to the left column."""
        table = self._table_of(s, qualifier)
        if table is None:
            return self.columns
        cols = self.tables[table]
        if self.partners and s.on == 3 and s.on_left is not None:
            linked = sorted({c for t, c in self.partners.get(s.on_left, ()) if t == table})
            return linked or cols
        if self.partners and s.on == 1:
            scope = s.scopes[-1]
            here = [t for t, sc in s.from_tables if sc == scope]
            if here and all(here):
                other = {here[-1]} if table != here[-1] else set(here[:-1])
                linked = sorted({c for c in cols if any(t in other for t, _ in self.partners.get((table, c), ()))})
                return linked or cols
        return cols

    def _viable_prefix(self, s: State) -> bool:
        """Whether the unfinished word can still become an allowed one."""
        w = s.word.lower()
        if s.expect_table:
            return _has_prefix(self._table_list, w) or any(a.startswith(w) for a, _, _ in s.aliases)
        if w[0].isdigit():
            return True
        if s.qualifier is not None:
            return _has_prefix(self._columns_after(s, s.qualifier), w)
        if s.prev in ("as", "with") or s.last_table:
            return True
        if _ALIAS_PREFIX.match(w) or any(a.startswith(w) for a, _, _ in s.aliases):
            return True
        # A table name may still become a qualifier.
        return _has_prefix(self._plain_words, w) or _has_prefix(self._table_list, w)


def _contains(sorted_words: Sequence[str], word: str) -> bool:
    i = bisect.bisect_left(sorted_words, word)
    return i < len(sorted_words) and sorted_words[i] == word


def _has_prefix(sorted_words: Sequence[str], prefix: str) -> bool:
    i = bisect.bisect_left(sorted_words, prefix)
    return i < len(sorted_words) and sorted_words[i].startswith(prefix)


def schema_names(db: str | os.PathLike | None = None, schema: str | None = None) -> dict[str, list[str]]:
    """``{table: [columns]}`` of a SQLite file (read-only), or of CREATE TABLE text (run on an
    empty in-memory database); empty when neither can be read."""
    if db is not None:
        from ..name_repair import read_schema

        return read_schema(db)
    if not schema:
        return {}
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(schema)
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%'")]
        return {t: [r[0] for r in conn.execute("SELECT name FROM pragma_table_info(?)", (t,))] for t in names}
    except sqlite3.Error:
        return {}
    finally:
        conn.close()
