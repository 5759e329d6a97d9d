"""The SQL lexer: one SQL case a line, then properties fuzzed with hypothesis."""

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mlx_text2sql.errors import InputError
from mlx_text2sql.sql import lexer as L
from mlx_text2sql.sql.lexer import (LexError, first_keyword, identifiers, mask, pieces, scan,
                                    split_statements, strip_leading_comments, tokenize,
                                    unterminated)

from sqlcases import SPLIT_CASES


def kinds(sql):
    """``kind:text`` of every token that is not whitespace."""
    return [f"{t.kind}:{t.text}" for t in tokenize(sql) if t.kind != L.SPACE]


# --------------------------------------------------------------------------- tokens, one case a line

@pytest.mark.parametrize("sql, expected", [
    ("SELECT a FROM t", ["keyword:SELECT", "identifier:a", "keyword:FROM", "identifier:t"]),
    ("select Name_1 from T", ["keyword:select", "identifier:Name_1", "keyword:from", "identifier:T"]),
    ("SELECT 'it''s'", ["keyword:SELECT", "string:'it''s'"]),
    ("SELECT ''", ["keyword:SELECT", "string:''"]),
    ('SELECT "a ""b"" c"', ["keyword:SELECT", 'quoted:"a ""b"" c"']),
    ("SELECT `a``b`", ["keyword:SELECT", "quoted:`a``b`"]),
    ("SELECT [a b]", ["keyword:SELECT", "quoted:[a b]"]),
    ("SELECT [a]]", ["keyword:SELECT", "quoted:[a]", "punct:]"]),
    ("SELECT 1 -- a 'comment'\n", ["keyword:SELECT", "number:1", "comment:-- a 'comment'"]),
    ("SELECT /* a ; \n b */ 1", ["keyword:SELECT", "comment:/* a ; \n b */", "number:1"]),
    ("SELECT /* a /* b */ 1", ["keyword:SELECT", "comment:/* a /* b */", "number:1"]),
    ("SELECT 1, 2.5, .5, 3., 1e10, 2.5E-3, 0x1F", ["keyword:SELECT", "number:1", "punct:,", "number:2.5",
                                                   "punct:,", "number:.5", "punct:,", "number:3.", "punct:,",
                                                   "number:1e10", "punct:,", "number:2.5E-3", "punct:,",
                                                   "number:0x1F"]),
    ("SELECT x'0A1b', X'', x 'a'", ["keyword:SELECT", "blob:x'0A1b'", "punct:,", "blob:X''", "punct:,",
                                    "identifier:x", "string:'a'"]),
    ("SELECT ax'0A'", ["keyword:SELECT", "identifier:ax", "string:'0A'"]),
    ("a<=b<>c!=d==e||f->g->>h<<i>>j", ["identifier:a", "punct:<=", "identifier:b", "punct:<>", "identifier:c",
                                       "punct:!=", "identifier:d", "punct:==", "identifier:e", "punct:||",
                                       "identifier:f", "punct:->", "identifier:g", "punct:->>", "identifier:h",
                                       "punct:<<", "identifier:i", "punct:>>", "identifier:j"]),
    ("a-b/c*d", ["identifier:a", "punct:-", "identifier:b", "punct:/", "identifier:c", "punct:*",
                 "identifier:d"]),
    ("a---b", ["identifier:a", "comment:---b"]),
    ("? ?1 :name @v $x", ["parameter:?", "parameter:?1", "parameter::name", "parameter:@v", "parameter:$x"]),
    ("SELECT t.a FROM t", ["keyword:SELECT", "identifier:t", "punct:.", "identifier:a", "keyword:FROM",
                           "identifier:t"]),
    ("SELECT naïve, 名前 FROM été", ["keyword:SELECT", "identifier:naïve", "punct:,", "identifier:名前",
                                    "keyword:FROM", "identifier:été"]),
    ("SELECT 1a", ["keyword:SELECT", "number:1", "identifier:a"]),
    ("CREATE TEMP TABLE IF NOT EXISTS", ["keyword:CREATE", "keyword:TEMP", "keyword:TABLE", "keyword:IF",
                                         "keyword:NOT", "keyword:EXISTS"]),
    ("SELECT 'open", ["keyword:SELECT", "string:'open"]),
    ('SELECT "open', ["keyword:SELECT", 'quoted:"open']),
    ("SELECT [open", ["keyword:SELECT", "quoted:[open"]),
    ("SELECT /* open", ["keyword:SELECT", "comment:/* open"]),
    ("SELECT 'a'';'", ["keyword:SELECT", "string:'a'';'"]),
    ("SELECT 'a''", ["keyword:SELECT", "string:'a''"]),
    ("", []),
])
def test_tokens(sql, expected):
    assert kinds(sql) == expected


@pytest.mark.parametrize("sql, value", [
    ("'it''s'", "it's"),
    ('"a""b"', 'a"b'),
    ("`a``b`", "a`b"),
    ("[a""b]", "a""b"),
    ("[a]", "a"),
    ("'open", "open"),
    ("name", "name"),
])
def test_token_value(sql, value):
    (tok,) = tokenize(sql)
    assert tok.value == value


@pytest.mark.parametrize("sql, closed", [
    ("'a'", True), ("'a", False), ("'a''", False), ('"a', False), ("`a", False), ("[a", False),
    ("/* a", False), ("/* a */", True), ("-- a", True), ("a", True),
])
def test_closed(sql, closed):
    assert tokenize(sql)[-1].closed is closed
    assert (unterminated(sql) is None) is closed


# --------------------------------------------------------------------------- statements, one case a line

@pytest.mark.parametrize("sql, expected", SPLIT_CASES + [
    ("-- only\n/* comments */", []),
    ("SELECT 'open; still open", ["SELECT 'open; still open"]),
    ("SELECT 1 /* open; still open", ["SELECT 1 /* open; still open"]),
    ("/* open; SELECT 1", []),
    ("SELECT 1;\n-- trailing\nSELECT 2 ;", ["SELECT 1", "-- trailing\nSELECT 2"]),
])
def test_split_statements(sql, expected):
    assert split_statements(sql) == expected


@pytest.mark.parametrize("sql, expected", [
    ("SELECT 1", ["SELECT 1"]),
    ("a;b;", ["a;", "b;"]),
    ("a;b", ["a;", "b"]),
    ("'x;y';z", ["'x;y';", "z"]),
    ("", [""]),
    (";", [";"]),
])
def test_pieces(sql, expected):
    assert pieces(sql) == expected


@pytest.mark.parametrize("sql, word", [
    ("SELECT 1", "SELECT"),
    ("  select 1", "SELECT"),
    ("-- c\n/* d */ With x AS (SELECT 1) SELECT 1", "WITH"),
    ("DROP TABLE t", "DROP"),
    ('"SELECT" 1', '"'),
    ("(SELECT 1)", "("),
    ("SELECT$x", "SELECT"),
    ("Select_me", "SELECT_ME"),
    ("-- only a comment", ""),
    ("", ""),
])
def test_first_keyword(sql, word):
    assert first_keyword(sql) == word


@pytest.mark.parametrize("sql, rest", [
    ("-- a\n/* b */ SELECT 1", "SELECT 1"),
    ("  SELECT 1 -- c", "SELECT 1 -- c"),
    ("/* open SELECT 1", "/* open SELECT 1"),
    ("-- only", ""),
])
def test_strip_leading_comments(sql, rest):
    assert strip_leading_comments(sql) == rest


@pytest.mark.parametrize("sql, names", [
    ('SELECT "a b", [c], `d` FROM t -- e', ["SELECT", "a b", "c", "d", "FROM", "t"]),
    ("SELECT x FROM t WHERE y = 'singer' /* z */", ["SELECT", "x", "FROM", "t", "WHERE", "y"]),
])
def test_identifiers(sql, names):
    assert identifiers(sql) == names


@pytest.mark.parametrize("sql, masked", [
    ("SELECT 'a(b' FROM t", "SELECT ##### FROM t"),
    ('SELECT "x" -- y\n;', "SELECT ### ####\n;"),
    ("a /* b */ c", "a ####### c"),
    ("plain; text", "plain; text"),
])
def test_mask(sql, masked):
    assert mask(sql, "#") == masked


def test_scan_keeps_plain_runs_whole():
    assert [(t.kind, t.text) for t in scan("SELECT a, b FROM t WHERE c = 'x;y'; -- z")] == [
        ("plain", "SELECT a, b FROM t WHERE c = "), ("string", "'x;y'"), ("punct", ";"), ("plain", " "),
        ("comment", "-- z")]


@pytest.mark.parametrize("sql, message", [
    ("SELECT 'abc", "unterminated string quote \"'\" at line 1, column 8: close it with \"'\""),
    ("SELECT 1\n  /* note", "unterminated block comment '/*' at line 2, column 3: close it with '*/'"),
    ('SELECT "a', "unterminated identifier quote '\"' at line 1, column 8"),
    ("SELECT [a", "unterminated identifier quote '[' at line 1, column 8: close it with ']'"),
])
def test_strict_reports_unterminated(sql, message):
    with pytest.raises(LexError, match=message.replace("[", r"\[").replace("*", r"\*")) as e:
        tokenize(sql, strict=True, where="q.sql")
    assert isinstance(e.value, InputError) and str(e.value).startswith("q.sql:")
    assert tokenize(sql)[-1].closed is False  # without strict: reported on the token


# --------------------------------------------------------------------------- properties

SQLISH = st.text(alphabet=list("'\"`[]-/*;\n \tSELECTfrom1_é$x().,=<>|?:@"), max_size=60)
CONTENT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=400, deadline=None)
@given(SQLISH)
def test_tokens_and_pieces_give_the_text_back(sql):
    tokens = tokenize(sql)
    assert "".join(t.text for t in tokens) == sql
    assert all(b.start == a.end for a, b in zip(tokens, tokens[1:]))
    assert all(t.text for t in tokens)
    assert "".join(pieces(sql)) == sql
    assert "".join(t.text for t in scan(sql)) == sql
    assert len(mask(sql)) == len(sql)
    # only the last token may be left open
    assert all(t.closed for t in tokens[:-1])


def _quoted(open_, close, content):
    return open_ + (content.replace(close, close + close) if close != "]" else content.replace("]", "")) + close


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(SQLISH.map(lambda s: s.replace("'", "").replace('"', "").replace("`", "")
                                      .replace("[", "").replace("/*", "").replace("--", "")),
                          st.sampled_from(["'", '"', "`", "[", "/*", "--"]), CONTENT), max_size=6))
def test_quote_and_comment_content_is_never_split(parts):
    """Quotes and comments full of ';' and quote characters stay whole tokens, inside one piece."""
    sql, inner = "", []
    for code, opener, content in parts:
        if opener == "/*":
            lit = "/*" + content.replace("*/", "") + "*/"
        elif opener == "--":
            lit = "--" + content.replace("\n", "") + "\n"
        else:
            lit = _quoted(opener, {"[": "]"}.get(opener, opener), content)
        sql += code + " " + lit
        inner.append(lit.rstrip("\n"))
    tokens = tokenize(sql)
    texts = [t.text for t in tokens if t.kind in (L.STRING, L.QUOTED, L.COMMENT)]
    assert texts == inner
    for lit in inner:
        assert any(lit in piece for piece in pieces(sql))
    assert all(t.closed for t in tokens)
    assert "".join(pieces(sql)) == sql


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["SELECT 1", "SELECT ';'", "SELECT 'a''b;'", 'SELECT "x;y"', "SELECT [p;q]",
                                 "SELECT 1 /* ; */", "SELECT 2 -- ;\n", "-- c\n", "/* c */", "  "]),
                max_size=6))
def test_split_finds_exactly_the_joined_statements(parts):
    sql = ";".join(parts)
    want = [p.strip() for p in parts if split_statements(p)]
    assert split_statements(sql) == want


@settings(max_examples=500, deadline=None)
@given(SQLISH)
@example(";--;")  # the second ';' is in a comment; the text up to it is complete all the same
def test_statement_ends_agree_with_sqlite(sql):
    """SQLite's own tokenizer (``sqlite3.complete_statement``) says where a statement ends: the
    text from the last statement end to a ';' is complete exactly where our statements end.
    (Checked from the last end, not from the start: a complete statement followed by a
    comment holding ';' is complete, though that ';' ends nothing.)"""
    import sqlite3

    ends = {t.end for t in scan(sql) if t.kind == L.PUNCT}
    cuts, at = set(), 0
    for piece in pieces(sql):
        at += len(piece)
        cuts.add(at)
    assert ends <= cuts and cuts - ends <= {len(sql)}
    last = 0
    for i, ch in enumerate(sql):
        if ch == ";":
            assert sqlite3.complete_statement(sql[last: i + 1]) == (i + 1 in ends), sql[: i + 1]
            if i + 1 in ends:
                last = i + 1


@settings(max_examples=400, deadline=None)
@given(SQLISH)
def test_identifiers_are_the_names_among_the_tokens(sql):
    want = [t.value for t in tokenize(sql) if t.kind in (L.KEYWORD, L.IDENTIFIER, L.QUOTED)]
    assert identifiers(sql) == want


@pytest.mark.parametrize("sql, spans", [
    ("a /* b */ c /* d", [(2, 9)]),
    ("'/* no */' -- /* no */\n/**/", [(23, 27)]),
    ('"/*" [/*] `/*` /* yes */', [(15, 24)]),
])
def test_block_comments(sql, spans):
    assert L.block_comments(sql) == spans


@settings(max_examples=300, deadline=None)
@given(SQLISH)
def test_block_comments_and_mask_agree_with_the_tokens(sql):
    tokens = tokenize(sql)
    assert L.block_comments(sql) == [(t.start, t.end) for t in tokens
                                     if t.kind == L.COMMENT and t.closed and t.text.startswith("/*")]
    hidden = {i for t in tokens if t.kind in (L.COMMENT, L.STRING, L.QUOTED, L.BLOB) for i in range(t.start, t.end)
              if not (t.kind == L.BLOB and i == t.start)}  # a blob's x is code, its quote is not
    assert [i for i, ch in enumerate(mask(sql, "\0")) if ch == "\0" and sql[i] != "\0"] == sorted(
        i for i in hidden if sql[i] != "\0")
