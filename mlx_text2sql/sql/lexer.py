"""The one SQL lexer: SQLite's tokens, for every place that needs to read SQL text.

Statement splitting for the executor, the first keyword of a query, cutting one statement out
of a model reply, finding CREATE TABLE statements in a schema, the names a query mentions: all
go through :func:`tokenize`, so quotes and comments mean the same thing everywhere.

Tokens follow SQLite's tokenizer:

==============  ==========================================================================
kind            text
==============  ==========================================================================
``space``       whitespace (``str.isspace``)
``comment``     ``-- ...`` up to (not including) the end of the line; ``/* ... */``
``string``      ``'...'``, a doubled ``''`` inside is one quote
``quoted``      a quoted identifier: ``"..."`` (``""`` escapes), ```...``` (doubled
                backquotes escape), ``[...]`` (no escape)
``blob``        ``x'0A1B'``
``number``      ``42``, ``3.5``, ``.5``, ``1e-3``, ``0x1F``
``keyword``     a word that is one of SQLite's keywords (:data:`KEYWORDS`), any case
``identifier``  any other word: a letter or ``_`` then letters, digits and ``_``
``parameter``   ``?``, ``?3``, ``:name``, ``@name``, ``$name``
``punct``       an operator (``||``, ``<=``, ``<>``, ``->>``, ...) or any other character
==============  ==========================================================================

Every character belongs to exactly one token, so the tokens joined give the text back, and a
statement split never falls inside a quote or a comment. A quote or block comment that is not
closed runs to the end of the text as one token with ``closed=False``; :func:`unterminated`
reports it and ``tokenize(..., strict=True)`` raises :class:`LexError` naming its line and
column. The lexer never fails otherwise: text that is not SQL lexes into words and punctuation.

Code that only needs to know what lies inside quotes and comments can use :func:`scan` (those
tokens, ``;``, and the ``plain`` text between them) or :func:`mask` (the text with quote and
comment contents blanked, so a regular expression over it sees code only); both are cheaper
than :func:`tokenize`.

Pure Python: no MLX import.
"""

from __future__ import annotations

import re
from typing import Iterable, NamedTuple

from ..errors import InputError

__all__ = ["Token", "LexError", "KEYWORDS", "tokenize", "scan", "block_comments", "token_at", "mask",
           "unterminated", "pieces",
           "split_statements", "first_code_token", "first_keyword", "strip_leading_comments",
           "identifiers"]

SPACE, COMMENT, STRING, QUOTED, BLOB, NUMBER = "space", "comment", "string", "quoted", "blob", "number"
KEYWORD, IDENTIFIER, PARAMETER, PUNCT = "keyword", "identifier", "parameter", "punct"
PLAIN = "plain"  # scan() only: the code between comments, quotes and ';', whitespace included

# Tokens that are not code: a statement made only of these is empty.
TRIVIA = frozenset({SPACE, COMMENT})
WORDS = frozenset({KEYWORD, IDENTIFIER})

# SQLite's keywords (https://www.sqlite.org/lang_keywords.html).
KEYWORDS = frozenset("""
ABORT ACTION ADD AFTER ALL ALTER ALWAYS ANALYZE AND AS ASC ATTACH AUTOINCREMENT BEFORE BEGIN
BETWEEN BY CASCADE CASE CAST CHECK COLLATE COLUMN COMMIT CONFLICT CONSTRAINT CREATE CROSS CURRENT
CURRENT_DATE CURRENT_TIME CURRENT_TIMESTAMP DATABASE DEFAULT DEFERRABLE DEFERRED DELETE DESC
DETACH DISTINCT DO DROP EACH ELSE END ESCAPE EXCEPT EXCLUDE EXCLUSIVE EXISTS EXPLAIN FAIL FILTER
FIRST FOLLOWING FOR FOREIGN FROM FULL GENERATED GLOB GROUP GROUPS HAVING IF IGNORE IMMEDIATE IN
INDEX INDEXED INITIALLY INNER INSERT INSTEAD INTERSECT INTO IS ISNULL JOIN KEY LAST LEFT LIKE
LIMIT MATCH MATERIALIZED NATURAL NO NOT NOTHING NOTNULL NULL NULLS OF OFFSET ON OR ORDER OTHERS
OUTER OVER PARTITION PLAN PRAGMA PRECEDING PRIMARY QUERY RAISE RANGE RECURSIVE REFERENCES REGEXP
REINDEX RELEASE RENAME REPLACE RESTRICT RETURNING RIGHT ROLLBACK ROW ROWS SAVEPOINT SELECT SET
TABLE TEMP TEMPORARY THEN TIES TO TRANSACTION TRIGGER UNBOUNDED UNION UNIQUE UPDATE USING VACUUM
VALUES VIEW VIRTUAL WHEN WHERE WINDOW WITH WITHOUT
""".split())

def _doubled_quote_rules(group: str, kind: str, q: str) -> tuple[tuple[str, str, bool, str], ...]:
    """The closed and the open rule (see below) of a quote ``q`` escaped by doubling it."""
    body = f"{q}[^{q}]*(?:{q}{q}[^{q}]*)*"
    return (group, kind, True, f"{body}{q}(?!{q})"), (f"open_{group}", kind, False, body)


# The lexer runs in two passes. The first finds the structure, what every consumer depends on:
# comments, quotes, ';' and the plain runs between them (whitespace included); splitting
# statements and reading a first keyword need no more, and long plain runs make it fast. The
# second cuts plain runs into words, numbers, parameters and punctuation.
# (group, kind, closed, pattern), tried in this order at each position. An "open_" rule only
# matches where its closed twin does not: the quote or comment then runs to the end of the text.
# A closing quote is never followed by the same quote: that pair is an escaped quote inside.
_STRUCTURE = (
    ("line_comment", COMMENT, True, r"--[^\n]*"),
    ("block_comment", COMMENT, True, r"/\*[^*]*\*+(?:[^/*][^*]*\*+)*/"),
    ("open_block_comment", COMMENT, False, r"/\*(?s:.*)"),
    *_doubled_quote_rules("string", STRING, "'"),
    *_doubled_quote_rules("dquoted", QUOTED, '"'),
    *_doubled_quote_rules("bquoted", QUOTED, "`"),
    ("bracketed", QUOTED, True, r"\[[^\]]*\]"),
    ("open_bracketed", QUOTED, False, r"\[[^\]]*"),
    ("semicolon", PUNCT, True, r";"),
    ("plain", PLAIN, True, r"(?:[^'\"`\[;/\-]|/(?!\*)|-(?!-))[^'\"`\[;/\-]*(?:(?:/(?!\*)|-(?!-))[^'\"`\[;/\-]*)*"),
)
_PLAIN = (
    ("space", SPACE, r"\s+"),
    ("number", NUMBER, r"0[xX][0-9A-Fa-f]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"),
    ("word", IDENTIFIER, r"[^\W\d]\w*"),
    ("parameter", PARAMETER, r"\?\d*|[:@$]\w+"),
    ("operator", PUNCT, r"\|\||<<|>>|<=|>=|==|!=|<>|->>|->"),
    ("punct", PUNCT, r"(?s:.)"),
)
_SCAN = re.compile("|".join(f"(?P<{g}>{pat})" for g, _, _, pat in _STRUCTURE))
# The quotes and comments alone, for a search: plain runs hold no opening quote, "--" or "/*",
# so the next match of this pattern is where the next quote or comment token of _SCAN starts.
# The lookahead lets the search skip plain text quickly.
_QUOTES_AND_COMMENTS = re.compile("(?=['\"`\\[/-])(?:" + "|".join(
    f"(?P<{g}>{pat})" for g, _, _, pat in _STRUCTURE if g not in ("plain", "semicolon")) + ")")
_SCAN_KIND = {g: (kind, closed) for g, kind, closed, _ in _STRUCTURE}
_REFINE = re.compile("|".join(f"(?P<{g}>{pat})" for g, _, pat in _PLAIN))
_REFINE_KIND = {g: kind for g, kind, _ in _PLAIN}
_HEX = re.compile(r"[0-9A-Fa-f]*")
_CLOSERS = {"'": "'", '"': '"', "`": "`", "[": "]"}


class Token(NamedTuple):
    """One token: its kind (see the module's table), its exact text and where it starts."""

    kind: str
    text: str
    start: int
    closed: bool = True  # False: a quote or block comment that runs to the end of the text

    @property
    def end(self) -> int:
        return self.start + len(self.text)

    @property
    def value(self) -> str:
        """A quoted identifier's or a string's content (doubled quotes undone); otherwise the text."""
        if self.kind not in (QUOTED, STRING):
            return self.text
        opener = self.text[0]
        close = _CLOSERS[opener]
        inner = self.text[1:-1] if self.closed else self.text[1:]
        return inner if close == "]" else inner.replace(close + close, close)


class LexError(InputError):
    """A quote or block comment that is never closed (``tokenize(..., strict=True)``)."""

    def __init__(self, message: str, where: str | None = None, line: int | None = None,
                 column: int | None = None):
        self.column = column
        super().__init__(message, where, line)


def tokenize(sql: str, strict: bool = False, where: str = "<sql>") -> list[Token]:
    """The tokens of ``sql``, in order; joined, their texts are ``sql``.

    ``strict``: raise :class:`LexError` (naming ``where``, the line and column) for an
    unclosed quote or block comment instead of returning it as a ``closed=False`` token.
    """
    tokens: list[Token] = []
    append = tokens.append
    for m in _SCAN.finditer(sql):
        group = m.lastgroup
        start = m.start()
        if group == "plain":
            for r in _REFINE.finditer(m.group()):
                kind, text = _REFINE_KIND[r.lastgroup], r.group()
                if kind == IDENTIFIER and text.upper() in KEYWORDS:
                    kind = KEYWORD
                append(Token(kind, text, start + r.start()))
            continue
        kind, closed = _SCAN_KIND[group]
        text = m.group()
        if (group == "string" and tokens and tokens[-1].text in ("x", "X")
                and tokens[-1].end == start and _HEX.fullmatch(text, 1, len(text) - 1)):
            prefix = tokens.pop()  # x'0A1B': a blob literal
            append(Token(BLOB, prefix.text + text, prefix.start))
            continue
        append(Token(kind, text, start, closed))
    if strict and tokens and not tokens[-1].closed:
        raise _lex_error(sql, tokens[-1], where)
    return tokens


def scan(sql: str) -> list[Token]:
    """The first pass alone: comments, strings, quoted identifiers and ``;`` as tokens, and the
    text between them as ``plain`` tokens (whitespace included). Faster than :func:`tokenize`
    for code that only needs to know what is inside quotes and comments."""
    return [Token(_SCAN_KIND[m.lastgroup][0], m.group(), m.start(), _SCAN_KIND[m.lastgroup][1])
            for m in _SCAN.finditer(sql)]


def block_comments(sql: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every closed ``/* ... */`` comment of ``sql`` (none inside a string,
    a quoted name or a ``--`` comment)."""
    return [m.span() for m in _QUOTES_AND_COMMENTS.finditer(sql) if m.lastgroup == "block_comment"]


def token_at(sql: str, pos: int) -> Token:
    """The :func:`scan` token that starts at ``pos`` (which must be where a token starts)."""
    m = _SCAN.match(sql, pos)
    return Token(_SCAN_KIND[m.lastgroup][0], m.group(), m.start(), _SCAN_KIND[m.lastgroup][1])


def mask(sql: str, fill: str = "\x00") -> str:
    """``sql`` with the text of every comment, string literal and quoted identifier replaced by
    ``fill`` characters: positions stay the same, so a pattern run over the result sees only
    code (no CREATE inside a comment, no ``(`` inside a string)."""
    parts, last = [], 0
    for m in _QUOTES_AND_COMMENTS.finditer(sql):
        start, end = m.span()
        parts.append(sql[last:start])
        parts.append(fill * (end - start))
        last = end
    if not parts:
        return sql
    parts.append(sql[last:])
    return "".join(parts)


def _lex_error(sql: str, tok: Token, where: str) -> LexError:
    line = sql.count("\n", 0, tok.start) + 1
    column = tok.start - (sql.rfind("\n", 0, tok.start) + 1) + 1
    what = {COMMENT: "block comment '/*'", STRING: "string quote \"'\""}.get(
        tok.kind, f"identifier quote {tok.text[0]!r}")
    close = "*/" if tok.kind == COMMENT else _CLOSERS[tok.text[0]]
    return LexError(f"unterminated {what} at line {line}, column {column}: "
                    f"close it with {close!r}", where, line, column)


def unterminated(sql: str) -> Token | None:
    """The quote or block comment that ``sql`` leaves open (it is always the last token), or None."""
    tokens = tokenize(sql)
    return tokens[-1] if tokens and not tokens[-1].closed else None


_COMMENT_GROUPS = frozenset({"line_comment", "block_comment", "open_block_comment"})


def pieces(sql: str) -> list[str]:
    """``sql`` cut after every top-level ``;`` (none inside quotes or comments).

    Joined, the pieces are ``sql`` exactly: each ends with its ``;``, except a last piece holding
    the text after the last ``;`` (when there is any, or when ``sql`` has no ``;``).
    """
    out, start = [], 0
    for m in _SCAN.finditer(sql):
        if m.lastgroup == "semicolon":
            out.append(sql[start:m.end()])
            start = m.end()
    if start < len(sql) or not out:
        out.append(sql[start:])
    return out


def split_statements(sql: str) -> list[str]:
    """The statements of ``sql``: split on top-level ``;``, each without its ``;`` and stripped;
    those holding nothing but whitespace and comments are left out."""
    out: list[str] = []
    start, has_code = 0, False
    for m in _SCAN.finditer(sql):
        group = m.lastgroup
        if group == "semicolon":
            if has_code:
                out.append(sql[start:m.start()].strip())
            start, has_code = m.end(), False
        elif not has_code and group not in _COMMENT_GROUPS:
            has_code = group != "plain" or not m.group().isspace()
    if has_code:
        out.append(sql[start:].strip())
    return out


def first_code_token(tokens: Iterable[Token]) -> Token | None:
    """The first token that is neither whitespace nor a comment."""
    for tok in tokens:
        if tok.kind not in TRIVIA:
            return tok
    return None


def _code_start(sql: str, stop_at_open: bool = False) -> int:
    """Where the first code token of ``sql`` starts (``len(sql)`` when there is none);
    ``stop_at_open``: an unclosed block comment counts as code."""
    for m in _SCAN.finditer(sql):
        group = m.lastgroup
        if group in _COMMENT_GROUPS:
            if stop_at_open and group == "open_block_comment":
                return m.start()
            continue
        if group != "plain":
            return m.start()
        i = _SPACES.match(sql, m.start(), m.end()).end()
        if i < m.end():
            return i
    return len(sql)


_WORD = re.compile(r"[^\W\d]\w*")
_SPACES = re.compile(r"\s*")


def first_keyword(sql: str) -> str:
    """The first word of a statement after any whitespace and comments, upper-cased; when the
    statement starts with something else, that token's first character ("" for none)."""
    i = _code_start(sql)
    m = _WORD.match(sql, i)
    return m.group().upper() if m else sql[i:i + 1]


def strip_leading_comments(sql: str) -> str:
    """``sql`` from its first code token on (leading whitespace and closed comments dropped)."""
    return sql[_code_start(sql, stop_at_open=True):]


def identifiers(sql: str) -> list[str]:
    """The names ``sql`` mentions, in order: every bare word (keywords too: SQLite accepts many
    as names) and every quoted identifier's content. String literals and comments are not names."""
    # tokenize() without building every token: words of the plain runs, quoted identifiers.
    names: list[str] = []
    word_end = -1  # where the last word collected ends (an x'..' blob is not a name)
    for m in _SCAN.finditer(sql):
        group = m.lastgroup
        if group == "plain":
            base = m.start()
            for r in _REFINE.finditer(m.group()):
                if r.lastgroup == "word":
                    names.append(r.group())
                    word_end = base + r.end()
        elif group in ("dquoted", "bquoted", "bracketed", "open_dquoted", "open_bquoted", "open_bracketed"):
            names.append(Token(QUOTED, m.group(), m.start(), _SCAN_KIND[group][1]).value)
        elif (group == "string" and word_end == m.start() and names and names[-1] in ("x", "X")
              and _HEX.fullmatch(m.group(), 1, m.end() - m.start() - 1)):
            names.pop()
    return names
