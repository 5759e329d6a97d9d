"""Spider records are scored as Spider's official execution evaluation scores them: values
exact (no case folding, no text-equals-number, no tolerance), rows as multisets, order only
under ORDER BY, columns in any order. Checked table-driven and against an independent
brute-force implementation of those rules."""

from __future__ import annotations

import itertools
import sqlite3
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_text2sql.scoring import evaluate_prediction, results_match

CASES = [
    # gold rows, predicted rows, ordered, spider (exact) verdict, lenient (WikiSQL) verdict
    ([("Paris",)], [("paris",)], False, False, True),
    ([("Paris",)], [(" Paris",)], False, False, True),
    ([(21,)], [("21",)], False, False, True),
    ([(1,)], [(1.0,)], False, True, True),
    ([(0.1 + 0.2,)], [(0.3,)], False, False, True),
    ([(1, "a"), (2, "b")], [(2, "b"), (1, "a")], False, True, True),
    ([(1, "a"), (2, "b")], [(2, "b"), (1, "a")], True, False, False),
    ([(1, "a")], [("a", 1)], False, True, True),
    ([(1,), (1,)], [(1,)], False, False, False),
    ([], [], False, True, True),
    ([], [(None,)], False, False, False),
    ([(None,)], [(None,)], False, True, True),
    ([(b"\x00",)], [(b"\x00",)], False, True, True),
]


@pytest.mark.parametrize("gold, pred, ordered, exact, lenient", CASES)
def test_exact_and_lenient_rules(gold, pred, ordered, exact, lenient):
    assert results_match(gold, pred, ordered=ordered, exact_values=True) is exact
    assert results_match(gold, pred, ordered=ordered) is lenient


def official_like(gold, pred, ordered):
    """An independent reading of Spider's execution comparison: every column order is tried
    (brute force), rows compared as Python tuples (as a list or as a multiset)."""
    if len(gold) != len(pred):
        return False
    if not gold:
        return True
    width = len(gold[0])
    if any(len(r) != width for r in pred):
        return False
    for perm in itertools.permutations(range(width)):
        moved = [tuple(r[j] for j in perm) for r in pred]
        if (list(map(tuple, gold)) == moved) if ordered else (Counter(map(tuple, gold)) == Counter(moved)):
            return True
    return False


VALUES = st.sampled_from([0, 1, 1.0, 2, 2.5, "1", "a", "A", "a ", None])


@settings(max_examples=400, deadline=None)
@given(width=st.integers(1, 3), n=st.integers(0, 4), data=st.data(), ordered=st.booleans())
def test_agrees_with_an_independent_implementation(width, n, data, ordered):
    row = st.tuples(*[VALUES] * width)
    gold = data.draw(st.lists(row, min_size=n, max_size=n))
    # a prediction that is often a shuffle / column permutation of the gold, sometimes not
    kind = data.draw(st.sampled_from(["shuffle", "permute", "random"]))
    if kind == "random":
        pred = data.draw(st.lists(row, min_size=0, max_size=4))
    else:
        pred = list(gold)
        if kind == "permute" and width > 1:
            perm = data.draw(st.permutations(range(width)))
            pred = [tuple(r[j] for j in perm) for r in pred]
        pred = data.draw(st.permutations(pred))
    assert results_match(gold, pred, ordered=ordered, exact_values=True) == official_like(gold, pred, ordered)


@pytest.fixture()
def db(tmp_path):
    path = tmp_path / "c.sqlite"
    con = sqlite3.connect(path)
    con.executescript("CREATE TABLE city (name TEXT, pop INTEGER, code TEXT);"
                      "INSERT INTO city VALUES ('Paris', 2100000, '75'), ('Lyon', 520000, '69');")
    con.close()
    return path


def record(sql, db, source):
    return {"id": "x", "question": "q", "sql": sql, "source": source, "db_path": str(db)}


@pytest.mark.parametrize("pred, spider, wikisql", [
    ("SELECT name FROM city WHERE pop > 1000000", True, True),
    ("SELECT lower(name) FROM city WHERE pop > 1000000", False, True),     # case
    ("SELECT CAST(code AS INTEGER) FROM city WHERE name = 'Paris'", None, None),  # see below
])
def test_source_picks_the_rules(db, pred, spider, wikisql):
    gold = "SELECT name FROM city WHERE pop > 1000000"
    if spider is None:  # text '75' against the number 75
        gold, spider, wikisql = "SELECT code FROM city WHERE name = 'Paris'", False, True
    assert evaluate_prediction(record(gold, db, "spider"), pred)["match"] is spider
    assert evaluate_prediction(record(gold, db, "wikisql"), pred)["match"] is wikisql


def test_spider_reads_double_quoted_values_as_its_evaluation_does(db):
    """Spider's gold writes values in double quotes; its records run with SQLite's default
    reading of them. Every other source gets an error for a name that is no column."""
    gold = 'SELECT pop FROM city WHERE name = "Paris"'
    spider = evaluate_prediction(record(gold, db, "spider"), "SELECT pop FROM city WHERE name = 'Paris'")
    assert spider["gold_error"] is None and spider["match"] is True
    other = evaluate_prediction(record(gold, db, "nsql"), "SELECT pop FROM city WHERE name = 'Paris'")
    assert other["gold_error"] and "Paris" in other["gold_error"]
    # a double-quoted unknown column is still no answer: it returns the text, not the column
    wrong = evaluate_prediction(record("SELECT name FROM city", db, "spider"), 'SELECT "nme" FROM city')
    assert wrong["match"] is False
