"""Scoring: result comparison, exact match, Spider hardness, per-example evaluation and the
summary. Table-driven: one case a line."""

from __future__ import annotations

import hashlib
import sqlite3
import time

import pytest

from mlx_text2sql import sqlexec
from mlx_text2sql.errors import InputError
from mlx_text2sql.scoring import (case_insensitive_sql, evaluate_prediction, exact_match,
                                  format_summary, normalize_sql, order_matters, results_match,
                                  spider_hardness, summarize)


@pytest.fixture(autouse=True)
def _fresh_cache():
    sqlexec.close_all()
    yield
    sqlexec.close_all()


# =========================================================================== results_match

RESULT_CASES = [
    # (gold rows, predicted rows, ordered, expected)
    ([(1,), (2,)], [(2,), (1,)], False, True),                 # row order ignored ...
    ([(1,), (2,)], [(2,), (1,)], True, False),                 # ... unless the gold orders
    ([(1,), (2,)], [(1,), (2,)], True, True),
    ([(1,), (1,)], [(1,)], False, False),                      # duplicates count
    ([(1,), (1,), (2,)], [(1,), (2,), (2,)], False, False),    # same set, other multiset
    ([(1,)], [(1.0,)], False, True),                           # int == float
    ([(0.3,)], [(0.1 + 0.2,)], False, True),                   # float tolerance
    ([(1.0,)], [(1.001,)], False, False),
    ([(1e-12,)], [(0.0,)], False, True),                       # absolute tolerance near 0
    ([(1000000,)], [(1000001,)], False, False),                # ints are exact
    ([(1000000,)], [(1000000.0000001,)], False, True),
    ([(2 ** 60,)], [(2 ** 60 + 1,)], False, False),
    ([("21",)], [(21,)], False, True),                         # numeric text == number
    ([(" 21 ",)], [(21.0,)], False, True),
    ([("3.50",)], [(3.5,)], False, True),
    ([("1996-97",)], [(1996,)], False, False),                 # not a number
    ([("0x10",)], [(16,)], False, False),
    ([("inf",)], [(float("inf"),)], False, False),
    ([("L5506",)], [("l5506",)], False, True),                 # text: case-insensitive
    ([(" Foo ",)], [("foo",)], False, True),                   # text: stripped
    ([("Foo",)], [("Bar",)], False, False),
    ([(None,)], [(None,)], False, True),                       # NULL == NULL
    ([(None,)], [(0,)], False, False),
    ([(None,)], [("",)], False, False),
    ([(None,)], [("None",)], False, False),
    ([(b"\x00\x01",)], [(b"\x00\x01",)], False, True),         # blobs byte for byte
    ([(b"a",)], [("a",)], False, False),
    ([(1, "a"), (2, "b")], [("a", 1), ("b", 2)], False, True),  # column permutation
    ([(1, "a"), (2, "b")], [("a", 1), ("b", 2)], True, True),
    ([(1, "a"), (2, "b")], [("b", 1), ("a", 2)], False, False),  # columns permuted, rows not
    ([(1, 1), (2, 3)], [(1, 1), (3, 2)], False, True),         # columns swapped
    ([(1, 1), (2, 3)], [(1, 3), (2, 1)], False, False),        # no column order fits
    ([(1, 2), (3, 4)], [(2, 1), (4, 3)], False, True),
    ([(1,)], [(1, 1)], False, False),                          # column count differs
    ([(1, 2)], [(1,)], False, False),
    ([], [], False, True),                                     # both empty
    ([], [(1,)], False, False),
    ([(1,)], [], False, False),
    ([(1.5, "x"), (1.5000000001, "y")], [(1.5000000001, "x"), (1.5, "y")], False, True),
    ([(float("nan"),)], [(float("nan"),)], False, True),
]


@pytest.mark.parametrize("gold,pred,ordered,expected", RESULT_CASES)
def test_results_match(gold, pred, ordered, expected):
    assert results_match(gold, pred, ordered=ordered) is expected


def test_text_case_can_be_made_to_count():
    assert not results_match([("A",)], [("a",)], text_nocase=False)
    assert results_match([(" A",)], [("A ",)], text_nocase=False)


def test_large_tolerant_results_compare_fast():
    gold = [(i, i / 7, f"name {i}") for i in range(5000)]
    pred = [(f"NAME {i}", i, i / 7 * (1 + 1e-9)) for i in reversed(range(5000))]
    assert results_match(gold, pred)
    pred[123] = ("NAME 123", 123, 0.0)
    assert not results_match(gold, pred)


def test_permutation_search_is_bounded_for_many_interchangeable_columns():
    # Every column holds {0, 1}: all 10! orders pair up, none fits; the search must stop early.
    gold = [(0,) * 10, (1,) * 10]
    pred = [(0, 1) * 5, (1, 0) * 5]
    start = time.perf_counter()
    assert not results_match(gold, pred)
    assert time.perf_counter() - start < 1.0


# =========================================================================== order_matters

@pytest.mark.parametrize("sql,expected", [
    ("SELECT a FROM t ORDER BY a", True),
    ("select a from t order by a desc limit 1", True),
    ("SELECT a FROM t", False),
    ("SELECT a FROM (SELECT a FROM t ORDER BY a)", False),
    ("SELECT a FROM t WHERE a IN (SELECT a FROM u ORDER BY a LIMIT 1)", False),
    ("SELECT a FROM t UNION SELECT b FROM u ORDER BY 1", True),
    ("SELECT a FROM t INTERSECT SELECT b FROM u", False),
    ("SELECT a FROM t ORDER BY a ((", True),                   # unparsable: text fallback
    ("SELECT a FROM (SELECT a FROM t ORDER BY a) ((", False),
])
def test_order_matters(sql, expected):
    assert order_matters(sql) is expected


# =========================================================================== exact match

EXACT_CASES = [
    # (gold, predicted, exact match?)
    ("SELECT name FROM singer", "select NAME   from   Singer ;", True),
    ('SELECT "name" FROM "singer"', "SELECT name FROM singer", True),
    ("SELECT T1.name FROM singer AS T1", "SELECT name FROM singer", True),
    ("SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.id = T2.sid",
     "SELECT singer.name FROM singer JOIN concert ON concert.sid = singer.id", True),
    ("SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.id = T2.sid",
     "SELECT a.name FROM singer a INNER JOIN concert b ON a.id = b.sid", True),
    ("SELECT name FROM singer WHERE age > 20 AND country = 'France'",
     "SELECT name FROM singer WHERE country = 'France' AND age > 20", True),
    ("SELECT name FROM singer WHERE a = 1 AND b = 2 AND c = 3",
     "SELECT name FROM singer WHERE c = 3 AND (a = 1 AND b = 2)", True),
    ("SELECT name FROM singer WHERE a = 1 OR b = 2", "SELECT name FROM singer WHERE b = 2 OR a = 1",
     True),
    ("SELECT name FROM singer WHERE a = 1 OR b = 2",
     "SELECT name FROM singer WHERE a = 1 AND b = 2", False),
    ("SELECT name FROM singer WHERE country = 'France'",
     "SELECT name FROM singer WHERE 'France' = country", True),
    ("SELECT name FROM singer WHERE age > 20", "SELECT name FROM singer WHERE 20 < age", False),
    ('SELECT name FROM singer WHERE country = "France"',
     "SELECT name FROM singer WHERE country = 'france'", True),
    ('SELECT name FROM singer WHERE country IN ("France", "Spain")',
     "SELECT name FROM singer WHERE country IN ('France', 'Spain')", True),
    ("SELECT name FROM singer WHERE country = 'France'",
     "SELECT name FROM singer WHERE country = 'Spain'", False),
    ("""SELECT "Player" FROM "1-10015132-11" WHERE "No." = '21'""",
     """SELECT player FROM "1-10015132-11" WHERE "no." = 21""", True),
    ("SELECT name FROM t WHERE x = 1.0", "SELECT name FROM t WHERE x = 1", True),
    ("SELECT count(*) AS cnt FROM t GROUP BY c ORDER BY cnt DESC",
     "SELECT COUNT(*) FROM t GROUP BY c ORDER BY COUNT(*) DESC", True),
    ("SELECT age AS a FROM t", "SELECT age FROM t", True),
    ("SELECT name FROM t ORDER BY age ASC", "SELECT name FROM t ORDER BY age", True),
    ("SELECT name FROM t ORDER BY age DESC", "SELECT name FROM t ORDER BY age", False),
    ("SELECT name FROM t ORDER BY age LIMIT 1", "SELECT name FROM t ORDER BY age LIMIT 3", False),
    ("SELECT name FROM t", "SELECT DISTINCT name FROM t", False),
    ("SELECT name FROM t", "SELECT age FROM t", False),
    ("SELECT name, age FROM t", "SELECT age, name FROM t", False),
    ("SELECT c, count(*) FROM t GROUP BY c", "SELECT c, count(*) FROM t", False),
    ("SELECT T1.x FROM t AS T1 JOIN t AS T2 ON T1.id = T2.pid",
     "SELECT a.x FROM t AS a JOIN t AS b ON a.id = b.pid", True),
    ("SELECT T1.x FROM t AS T1 JOIN t AS T2 ON T1.id = T2.pid",
     "SELECT T2.x FROM t AS T1 JOIN t AS T2 ON T1.id = T2.pid", False),
    ("SELECT name FROM s WHERE age > (SELECT avg(age) FROM s)",
     "SELECT T1.name FROM s AS T1 WHERE T1.age > (SELECT avg(T2.age) FROM s AS T2)", True),
    ("SELECT name FROM s AS T1 WHERE age > (SELECT avg(age) FROM s AS T2 WHERE T2.g = T1.g)",
     "SELECT name FROM s AS T1 WHERE age > (SELECT avg(age) FROM s AS T2 WHERE T2.g = T2.g)",
     False),
    ("SELECT a FROM t UNION SELECT a FROM u", "select a from t union select a from u", True),
    ("SELECT a FROM t UNION SELECT a FROM u", "SELECT a FROM t UNION ALL SELECT a FROM u", False),
    ("SELECT a FROM t WHERE b != 1", "SELECT a FROM t WHERE b <> 1", True),
    ("SELECT name FROM singer", "SELECT name FROM singer WHERE", False),   # unparsable
    ("SELECT name FROM singer", "", False),
    ("SELECT name FROM singer", "SELECT name FROM singer; SELECT 1", False),
    ("SELEC name FROM", "SELEC name FROM", False),                         # gold unparsable
]


@pytest.mark.parametrize("gold,pred,expected", EXACT_CASES)
def test_exact_match(gold, pred, expected):
    assert exact_match(gold, pred) is expected


def test_exact_match_is_symmetric_on_the_table():
    for gold, pred, expected in EXACT_CASES:
        if normalize_sql(gold) is not None:
            assert exact_match(pred, gold) is expected, (gold, pred)


def test_normalize_sql_output_is_canonical_sql():
    assert normalize_sql("select T1.Name from Singer as T1 where T1.Age > 3 and T1.Name = 'Ann'") \
        == """SELECT "name" FROM "singer" WHERE 'ann' = "name" AND "age" > 3"""
    assert normalize_sql("not sql at all (") is None


# =========================================================================== WikiSQL case rule

@pytest.mark.parametrize("sql,expected", [
    ("SELECT a FROM t WHERE b = 'x'", "SELECT a FROM t WHERE b COLLATE CASEFOLD = 'x'"),
    ("SELECT a FROM t WHERE 'x' = b", "SELECT a FROM t WHERE 'x' = b COLLATE CASEFOLD"),
    ("SELECT a FROM t WHERE b IN ('x', 'y')",
     "SELECT a FROM t WHERE b COLLATE CASEFOLD IN ('x', 'y')"),
    ("SELECT a FROM t WHERE b = 3", "SELECT a FROM t WHERE b = 3"),             # unchanged
    ("SELECT a FROM t WHERE b = c", "SELECT a FROM t WHERE b = c"),
    ("not sql (", "not sql ("),
])
def test_case_insensitive_sql(sql, expected):
    assert case_insensitive_sql(sql) == expected


# =========================================================================== hardness

def cu(col, agg=0):
    """Spider col_unit / val_unit helpers: (agg_id, col_id, distinct)."""
    return [agg, col, False]


def vu(col, agg=0):
    return [0, cu(col, agg), None]


def cond(col, op, value, negate=False):
    return [negate, op, vu(col), value, None]


EQ, GT, IN, LIKE = 2, 3, 8, 9
COUNT, AVG = 3, 5


def spider_sql(select, tables=1, where=(), group=(), order=None, having=(), limit=None,
               join_conds=(), **setops):
    return {
        "select": [False, [[agg, vu(col)] for agg, col in select]],
        "from": {"table_units": [["table_unit", i] for i in range(tables)],
                 "conds": list(join_conds)},
        "where": list(where), "groupBy": [cu(c) for c in group], "having": list(having),
        "orderBy": [order[0], [vu(c, agg) for agg, c in order[1]]] if order else [],
        "limit": limit,
        "intersect": setops.get("intersect"), "union": setops.get("union"),
        "except": setops.get("except"),
    }


HARDNESS_CASES = [
    # (SQL text, the same query as Spider's parsed dict, bucket)
    ("SELECT count(*) FROM singer", spider_sql([(COUNT, 0)]), "easy"),
    ("SELECT name FROM singer WHERE age > 20",
     spider_sql([(0, 1)], where=[cond(2, GT, 20.0)]), "easy"),
    ("SELECT name, age FROM singer ORDER BY age",
     spider_sql([(0, 1), (0, 2)], order=("asc", [(0, 2)])), "medium"),
    ("SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.id = T2.sid",
     spider_sql([(0, 1)], tables=2, join_conds=[cond(3, EQ, cu(4))]), "easy"),
    ("SELECT T1.name, T2.year FROM singer AS T1 JOIN concert AS T2 ON T1.id = T2.sid",
     spider_sql([(0, 1), (0, 8)], tables=2, join_conds=[cond(3, EQ, cu(4))]), "medium"),
    ("SELECT name FROM singer WHERE age > 20 OR country LIKE '%a%'",
     spider_sql([(0, 1)], where=[cond(2, GT, 20.0), "or", cond(5, LIKE, '"%a%"')]), "hard"),
    ("SELECT name FROM singer WHERE age > (SELECT avg(age) FROM singer)",
     spider_sql([(0, 1)], where=[cond(2, GT, spider_sql([(AVG, 2)]))]), "hard"),
    ("SELECT name FROM a INTERSECT SELECT name FROM b",
     spider_sql([(0, 1)], intersect=spider_sql([(0, 6)])), "hard"),
    ("SELECT country, count(*) FROM singer GROUP BY country ORDER BY count(*) DESC LIMIT 1",
     spider_sql([(0, 5), (COUNT, 0)], group=[5], order=("desc", [(COUNT, 0)]), limit=1),
     "hard"),
    ("SELECT T1.country, count(*) FROM singer AS T1 JOIN concert AS T2 ON T1.id = T2.sid "
     "GROUP BY T1.country ORDER BY count(*) DESC LIMIT 1",
     spider_sql([(0, 5), (COUNT, 0)], tables=2, join_conds=[cond(3, EQ, cu(4))], group=[5],
                order=("desc", [(COUNT, 0)]), limit=1), "extra"),
    ("SELECT count(*) FROM t WHERE id NOT IN (SELECT id FROM u)",
     spider_sql([(COUNT, 0)], where=[cond(0, IN, spider_sql([(0, 7)]), negate=True)]),
     "extra"),
    ("SELECT name FROM t WHERE id NOT IN (SELECT id FROM u)",
     spider_sql([(0, 1)], where=[cond(0, IN, spider_sql([(0, 7)]), negate=True)]), "hard"),
    ("SELECT a FROM t GROUP BY a HAVING count(*) > 1 AND sum(b) > 2",
     spider_sql([(0, 1)], group=[1], having=[[False, GT, vu(0, COUNT), 1.0, None], "and",
                                            [False, GT, vu(2, 4), 2.0, None]]), "easy"),
]


@pytest.mark.parametrize("text,parsed,expected", HARDNESS_CASES)
def test_spider_hardness_from_dict_and_text_agree(text, parsed, expected):
    assert spider_hardness(parsed) == expected
    assert spider_hardness(text) == expected


def test_spider_hardness_rejects_what_it_cannot_grade():
    with pytest.raises(InputError):
        spider_hardness("SELECT FROM WHERE (")
    with pytest.raises(InputError):
        spider_hardness({"query": "SELECT 1"})


# =========================================================================== evaluate_prediction

@pytest.fixture()
def spider_dir(tmp_path):
    """A JSONL folder with a database at a relative path, as convert writes it."""
    db = tmp_path / "databases" / "concert.sqlite"
    db.parent.mkdir()
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE singer (id INTEGER PRIMARY KEY, name TEXT, country TEXT, age INTEGER);
        INSERT INTO singer VALUES (1, 'Joe Sharp', 'Netherlands', 52),
            (2, 'Timbaland', 'United States', 32), (3, 'Justin Brown', 'France', 29),
            (4, 'Rose White', 'France', 41);
        CREATE TABLE "1-10015132-11" ("Player" TEXT, "No." TEXT, "Position" TEXT);
        INSERT INTO "1-10015132-11" VALUES ('Terrence Ross', '31', 'Guard'),
            ('Aleksandar Radojević', '21', 'Center');
    """)
    conn.commit()
    conn.close()
    return tmp_path


def _record(sql, source="spider", **extra):
    rec = {"question": "q",
           "schema": "CREATE TABLE singer (id INTEGER, name TEXT, country TEXT, age INTEGER);",
           "sql": sql, "source": source, "id": "ex-1", "db_path": "databases/concert.sqlite",
           "db_id": "concert", "meta": {}}
    rec.update(extra)
    return rec


def test_correct_prediction_matches(spider_dir):
    pred = "select T1.name from singer as T1 where T1.country = 'France' order by age"
    r = evaluate_prediction(_record("SELECT name FROM singer WHERE country = 'France'"), pred,
                            base_dir=spider_dir)
    assert r["match"] is True and r["valid_sql"] is True and r["exact_match"] is False
    assert r["pred_error"] is None and r["gold_error"] is None and r["ordered"] is False
    assert r["gold_rows"]["n_rows"] == 2
    assert r["pred_rows"]["rows"] == [["Justin Brown"], ["Rose White"]]
    assert r["id"] == "ex-1" and r["source"] == "spider" and r["hardness"] == "easy"


def test_wrong_prediction_is_valid_but_no_match(spider_dir):
    r = evaluate_prediction(_record("SELECT count(*) FROM singer WHERE age > 30"),
                            "SELECT count(*) FROM singer WHERE age > 40", base_dir=spider_dir)
    assert r["match"] is False and r["valid_sql"] is True


def test_order_counts_when_the_gold_orders(spider_dir):
    rec = _record("SELECT name FROM singer ORDER BY age DESC")
    r = evaluate_prediction(rec, "SELECT name FROM singer ORDER BY age", base_dir=spider_dir)
    assert r["ordered"] is True and r["match"] is False
    r = evaluate_prediction(rec, "SELECT name FROM singer ORDER BY age DESC", base_dir=spider_dir)
    assert r["match"] is True and r["exact_match"] is True


@pytest.mark.parametrize("pred,kind", [
    ("SELECT nam FROM singer", "error"),
    ("SELECT name FROM", "syntax"),
    ("Sure! Here is the query.", "syntax"),
    ("", "syntax"),
    ("DROP TABLE singer", "refused"),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
     "timeout"),
])
def test_failing_prediction_is_invalid_with_its_error(spider_dir, pred, kind):
    db = spider_dir / "databases" / "concert.sqlite"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    r = evaluate_prediction(_record("SELECT name FROM singer"), pred, base_dir=spider_dir,
                            timeout_s=0.2)
    assert r["match"] is False and r["valid_sql"] is False
    assert r["pred_error_kind"] == kind and r["pred_error"]
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_absolute_db_path_needs_no_base_dir(spider_dir):
    rec = _record("SELECT count(*) FROM singer",
                  db_path=str(spider_dir / "databases" / "concert.sqlite"))
    assert evaluate_prediction(rec, "SELECT count(id) FROM singer")["match"] is True


def test_missing_database_falls_back_to_the_schema_for_validity(tmp_path):
    rec = _record("SELECT name FROM singer", db_path="nowhere/missing.sqlite")
    ok = evaluate_prediction(rec, "SELECT name FROM singer WHERE age > 3", base_dir=tmp_path)
    assert ok["match"] is None and ok["valid_sql"] is True and "missing.sqlite" in ok["gold_error"]
    bad = evaluate_prediction(rec, "SELECT nosuch FROM singer", base_dir=tmp_path)
    assert bad["match"] is None and bad["valid_sql"] is False and bad["pred_error_kind"] == "error"


def test_schema_only_record_checks_validity_against_the_schema():
    rec = _record("SELECT name FROM singer", db_path=None)
    r = evaluate_prediction(rec, "SELECT name FROM singer")
    assert r["match"] is None and r["valid_sql"] is True and r["exact_match"] is True
    assert evaluate_prediction(rec, "SELECT title FROM singer")["valid_sql"] is False


def test_record_without_database_or_schema_only_parses():
    rec = _record("SELECT name FROM singer", db_path=None, schema=None)
    assert evaluate_prediction(rec, "SELECT x FROM y")["valid_sql"] is True
    r = evaluate_prediction(rec, "SELECT x FROM")
    assert r["valid_sql"] is False and r["pred_error_kind"] == "syntax" and r["match"] is None


def test_gold_error_leaves_match_unscored(spider_dir):
    r = evaluate_prediction(_record("SELECT nosuch FROM singer"), "SELECT name FROM singer",
                            base_dir=spider_dir)
    assert r["match"] is None and r["valid_sql"] is True and "nosuch" in r["gold_error"]


def test_wikisql_literals_compare_case_insensitively(spider_dir):
    # WikiSQL's gold and questions are lower-cased; the cells are not.
    query = """SELECT "No." FROM "1-10015132-11" WHERE "Player" = '{}'"""
    rec = _record(query.format("terrence ross"), source="wikisql")
    r = evaluate_prediction(rec, query.format("Terrence Ross"), base_dir=spider_dir)
    assert r["match"] is True and r["gold_rows"]["rows"] == [["31"]]
    wrong = evaluate_prediction(rec, query.format("nobody"), base_dir=spider_dir)
    assert wrong["match"] is False
    strict = evaluate_prediction(rec, query.format("nobody"), base_dir=spider_dir,
                                 case_insensitive=False)
    assert strict["gold_rows"]["n_rows"] == 0 and strict["match"] is True  # the trap it avoids


def test_wikisql_case_rule_folds_non_ascii_letters(spider_dir):
    gold = """SELECT "No." FROM "1-10015132-11" WHERE "Player" = 'Aleksandar Radojević'"""
    pred = """SELECT "No." FROM "1-10015132-11" WHERE "Player" = 'ALEKSANDAR RADOJEVIĆ'"""
    r = evaluate_prediction(_record(gold, source="wikisql"), pred, base_dir=spider_dir)
    assert r["match"] is True and r["pred_rows"]["rows"] == [["21"]]


def test_numeric_text_and_numbers_match(spider_dir):
    rec = _record("""SELECT "No." FROM "1-10015132-11" WHERE "Position" = 'center'""",
                  source="wikisql")
    pred = """SELECT CAST("No." AS INTEGER) FROM "1-10015132-11" WHERE "Position" = 'Center'"""
    r = evaluate_prediction(rec, pred, base_dir=spider_dir)
    assert r["match"] is True


def test_hardness_comes_from_meta_when_present(spider_dir):
    rec = _record("SELECT name FROM singer", meta={"hardness": "extra"})
    assert evaluate_prediction(rec, "SELECT 1", base_dir=spider_dir)["hardness"] == "extra"
    rec = _record("SELECT name, age FROM singer ORDER BY age")
    assert evaluate_prediction(rec, "SELECT 1", base_dir=spider_dir)["hardness"] == "medium"


# =========================================================================== summary

def _result(source, hardness, match, em, valid, gold_error=None, kind=None):
    return {"source": source, "hardness": hardness, "match": match, "exact_match": em,
            "valid_sql": valid, "gold_error": gold_error, "pred_error_kind": kind}


RESULTS = [
    _result("spider", "easy", True, True, True),
    _result("spider", "easy", False, False, True),
    _result("spider", "hard", False, False, False, kind="syntax"),
    _result("spider", "extra", None, False, True, gold_error="no database"),
    _result("wikisql", "easy", True, False, True),
    _result("wikisql", None, False, False, False, kind="error"),
]


def test_summarize_totals_and_breakdowns():
    s = summarize(RESULTS)
    assert (s["n"], s["n_scored"], s["n_gold_errors"]) == (6, 5, 1)
    assert s["execution_accuracy"] == pytest.approx(2 / 5)
    assert s["exact_match"] == pytest.approx(1 / 6)
    assert s["valid_sql_rate"] == pytest.approx(4 / 6)
    assert s["pred_error_kinds"] == {"syntax": 1, "error": 1}
    assert list(s["by_source"]) == ["spider", "wikisql"]
    assert s["by_source"]["spider"]["execution_accuracy"] == pytest.approx(1 / 3)
    assert s["by_source"]["wikisql"]["n"] == 2
    assert list(s["by_hardness"]) == ["easy", "hard", "extra", "unknown"]
    assert s["by_hardness"]["easy"]["execution_accuracy"] == pytest.approx(2 / 3)
    assert s["by_hardness"]["extra"]["execution_accuracy"] is None


def test_summarize_of_nothing_has_no_rates():
    s = summarize([])
    assert s["n"] == 0 and s["execution_accuracy"] is None and s["exact_match"] is None


def test_format_summary_is_a_table_with_every_group():
    text = format_summary(summarize(RESULTS))
    lines = text.splitlines()
    assert lines[0].split() == ["group", "n", "scored", "exec", "acc", "exact", "valid", "SQL",
                                "gold", "err"]
    assert lines[2].split() == ["all", "6", "5", "40.0%", "16.7%", "66.7%", "1"]
    assert any(line.split()[:4] == ["source=spider", "4", "3", "33.3%"] for line in lines)
    assert any(line.startswith("hardness=extra") and line.split()[3] == "-" for line in lines)
    assert lines[-1] == "prediction errors: syntax 1, error 1"
    assert len({len(line) for line in lines[:-1]}) == 1  # aligned columns


def test_format_summary_names_a_single_source():
    text = format_summary(summarize(RESULTS[:2]))
    assert text.splitlines()[2].startswith("all (spider)")
    assert "source=" not in text
