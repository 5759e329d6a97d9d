"""The name constraint of schema-constrained decoding: which reply texts stay viable queries
over a database's names, fed in pieces as a decoder would feed tokens."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings, strategies as st

from mlx_text2sql.sql.constrain import NameConstraint, schema_names

SCHEMA = {"singer": ["Singer_ID", "Name", "Age", "Country"],
          "concert": ["concert_id", "concert_name", "Singer_ID", "Year"]}


def feed(c: NameConstraint, text: str, pieces: int = 1):
    """Feed ``text`` ``pieces`` characters at a time; the index where it stopped being
    viable (or None) and whether it may end there."""
    s = c.start()
    for i in range(0, len(text), pieces):
        nxt = c.step(s, text[i: i + pieces])
        if nxt is None:
            return i, False
        s = nxt
    return None, c.can_end(s)


@pytest.fixture
def c():
    return NameConstraint(SCHEMA)


@pytest.mark.parametrize("sql", [
    "SELECT name FROM singer",
    "SELECT T1.Name , count(*) FROM singer AS T1 JOIN concert AS T2 ON T1.singer_id = T2.singer_id "
    "GROUP BY T1.singer_id ORDER BY count(*) DESC LIMIT 1",
    "SELECT name FROM singer WHERE country = 'Not a Column' AND age > 3.5",
    "SELECT count(*) AS cnt FROM singer ORDER BY cnt DESC",
    "SELECT s.name FROM singer s WHERE s.age > 20",
    "SELECT name FROM singer WHERE age > (SELECT avg(age) FROM singer)",
    "SELECT name FROM singer INTERSECT SELECT concert_name FROM concert",
    'SELECT "whatever is quoted" FROM singer',
    "select NAME from SINGER",
    "WITH x AS (SELECT name FROM singer) SELECT name FROM x",
    "SELECT name FROM singer , concert WHERE singer.singer_id = concert.singer_id",
    "SELECT DISTINCT T2.year FROM singer AS T1 JOIN concert AS T2 ON T1.singer_id = T2.singer_id",
])
def test_queries_over_the_schema_stay_viable(c, sql):
    assert feed(c, sql) == (None, True)
    assert feed(c, sql, pieces=3) == (None, True)


@pytest.mark.parametrize("sql, stop", [
    ("SELECT artist_name FROM singer", "SELECT ar"),  # no allowed word starts "ar"
    ("SELECT name FROM singers", "SELECT name FROM singers"),  # a table: "singer" only
    ("SELECT name FROM singer_id", "SELECT name FROM singer_"),  # a column is no table
    ("SELECT T1.year FROM singer AS T1", None),  # T1 is defined after it is used: any column
    ("SELECT name FROM singer AS T1 WHERE T1.year = 1", "SELECT name FROM singer AS T1 WHERE T1.y"),
    ("SELECT T2.name FROM singer AS T1 JOIN concert AS T2 ON T2.concert_name = T1.name WHERE T2.name = 'x'",
     "SELECT T2.name FROM singer AS T1 JOIN concert AS T2 ON T2.concert_name = T1.name WHERE T2.n"),
    ("SELECT count(*) FROM singer GROUP BY nation", "SELECT count(*) FROM singer GROUP BY nati"),  # "nat": NATURAL
    # Names out of place. A table name alone is no column: only before a "." (SELECT singer.name).
    ("SELECT singer FROM singer", "SELECT singer "),
    # A qualifier is a table, an alias, T1-style, or a table's shorthand (s, c, sg...): not H.
    ("SELECT H.name FROM singer", "SELECT H."),
    # Once a SELECT's FROM clause is read, a qualifier is one of its tables or aliases.
    ("SELECT name FROM singer AS T1 WHERE T2.age > 3", "SELECT name FROM singer AS T1 WHERE T2."),
    ("SELECT name FROM singer WHERE concert.year > 3", "SELECT name FROM singer WHERE concert."),
    # A quoted qualifier is read as one: concert has no column starting "a".
    ('SELECT "concert".age FROM concert', 'SELECT "concert".a'),
    # A shorthand qualifier defined later is taken as the one table it abbreviates.
    ("SELECT si.year FROM singer AS si", "SELECT si.y"),
])
def test_names_the_database_lacks_are_refused_where_they_start_to_differ(c, sql, stop):
    at, _ = feed(c, sql)
    if stop is None:
        assert at is None
    else:
        assert at is not None and sql[: at + 1] == stop


def test_an_unfinished_name_cannot_end_the_reply(c):
    assert feed(c, "SELECT nam") == (None, False)
    assert feed(c, "SELECT name") == (None, True)
    assert feed(c, "SELECT name FROM sing") == (None, False)


def test_aliases_belong_to_their_select(c):
    # Inside the subquery T1 is not yet defined: its columns are any table's.
    sql = "SELECT T1.name FROM singer AS T1 WHERE T1.singer_id IN (SELECT T1.year FROM concert AS T1)"
    assert feed(c, sql) == (None, True)
    # Back outside, T1 is singer again: singer has no year.
    bad = "SELECT T1.name FROM singer AS T1 WHERE T1.age IN (SELECT age FROM singer) AND T1.year = 1"
    at, _ = feed(c, bad)
    assert bad[: at + 1].endswith("T1.y")


def test_text_before_the_query_and_after_its_end_is_free(c):
    assert feed(c, "Here it is: SELECT name FROM singer; and the nonsense words after") == (None, True)
    assert feed(c, "```sql\nSELECT name FROM singer\n```") == (None, True)
    assert feed(c, "I have no idea") == (None, True)


def test_start_in_query_checks_from_the_first_character():
    c = NameConstraint(SCHEMA, start_in_query=True)
    assert feed(c, "name FROM singer") == (None, True)
    assert feed(c, "nonsense")[0] == 2  # "no" begins NO, NOT...; no allowed word begins "non"


def test_a_refused_piece_leaves_the_state_usable(c):
    s = c.start()
    for piece in ["SELECT", " name", " FROM", " sing"]:
        s = c.step(s, piece)
    assert c.step(s, "ers") is None
    s = c.step(s, "er")
    assert s is not None and c.can_end(s)


def test_schema_names_from_a_file_and_from_text(tmp_path):
    db = tmp_path / "d.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE singer (singer_id INT, name TEXT)")
    conn.commit()
    conn.close()
    assert schema_names(db=db) == {"singer": ["singer_id", "name"]}
    assert schema_names(schema='CREATE TABLE "head" ("id" INT, "born state" TEXT);') == {"head": ["id", "born state"]}
    assert schema_names(schema="not sql") == {}
    assert schema_names() == {}


WORDS = ["SELECT", "FROM", "WHERE", "name", "age", "singer", "concert", "T1", ".", ",", " ", "(", ")",
         "'x y'", "=", "artist", "year", "AS", "JOIN", "ON", "count", "*", "3"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=25), st.integers(1, 5))
def test_pieces_do_not_change_the_decision(words, size):
    """Feeding a text character by character or in pieces of any size decides the same."""
    c = NameConstraint(SCHEMA)
    text = " ".join(words)
    one = feed(c, text, 1)
    many = feed(c, text, size)
    assert (one[0] is None) == (many[0] is None)
    if one[0] is None:
        assert one[1] == many[1]
    else:  # refused within the same piece
        assert one[0] // size == many[0] // size


@pytest.mark.parametrize("sql", [
    # An unqualified column may be any table's: name repair joins the table that has it.
    "SELECT age FROM concert",
    "SELECT name FROM concert WHERE age > 3",
    "SELECT singer.name FROM singer",
    "SELECT si.name FROM singer AS si",
    # A subquery sees the columns of the SELECT around it (a correlated reference).
    "SELECT name FROM singer WHERE 1 < (SELECT count(*) FROM concert WHERE concert.singer_id = singer_id AND age > 1)",
    "SELECT t.name FROM (SELECT name FROM singer) AS t WHERE name = 'y'",
    # A quoted table is a source of its FROM clause like a bare one.
    'SELECT name FROM singer JOIN "concert" ON singer.singer_id = "concert".singer_id WHERE year > 1',
    'SELECT T2.year FROM singer AS T1 JOIN [concert] AS T2 ON T1.singer_id = T2.singer_id',
])
def test_names_in_place_are_allowed(c, sql):
    assert feed(c, sql) == (None, True)


RUNNING = [
    "SELECT T2.name , count(*) AS n FROM enrolment AS T1 JOIN student AS T2 ON T1.student_id = T2.student_id "
    "GROUP BY T1.student_id HAVING count(*) > 1 ORDER BY n DESC",
    "SELECT name FROM student WHERE age BETWEEN 18 AND 21 AND city LIKE 'C%' OR city IN ('Leeds', 'Brno')",
    "SELECT DISTINCT T3.name FROM course AS T1 JOIN teacher AS T2 ON T1.teacher_id = T2.teacher_id "
    "JOIN department AS T3 ON T2.dept_id = T3.dept_id",
    "SELECT name FROM student EXCEPT SELECT T1.name FROM student AS T1 JOIN club_member AS T2 ON T1.student_id = T2.student_id",
    "SELECT count(DISTINCT city) , max(age) - min(age) , avg(age) * 1.5e0 FROM student WHERE age <> -1",
    "SELECT CASE WHEN age > 20 THEN 'old' ELSE 'young' END , CAST(age AS TEXT) || ' years' FROM student",
    "SELECT s.name FROM student s LEFT JOIN club_member cm ON s.student_id = cm.student_id WHERE cm.club_id IS NULL",
    'SELECT "club_name" , [founded] FROM "club" WHERE founded > (SELECT avg(founded) FROM club)',
    "SELECT title FROM course WHERE dept_id = (SELECT dept_id FROM department WHERE name = 'Physics') ORDER BY title ASC LIMIT 2",
    "SELECT T1.title FROM course AS T1 WHERE EXISTS (SELECT 1 FROM enrolment AS T2 WHERE T2.course_id = T1.course_id AND T2.grade >= 3.5)",
    "SELECT name FROM student WHERE student_id NOT IN (SELECT student_id FROM enrolment WHERE grade < 3)",
    "WITH busy AS (SELECT club_id , count(*) AS c FROM club_member GROUP BY club_id) SELECT club_name FROM club JOIN busy ON club.club_id = busy.club_id",
    "SELECT name FROM student WHERE age = 22;",
]


def test_gold_and_running_queries_are_never_refused(tmp_path):
    """Soundness on real queries: every gold query of the Spider fixture, and a set of queries
    that run on its database (aliases, subqueries, set operations, CASE, CAST, quoted names,
    a CTE), stays viable from its first character to its end."""
    import json
    from pathlib import Path

    fixture = Path(__file__).parent.parent / "fixtures" / "spider_school"
    db = tmp_path / "school.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript((fixture / "school.sql").read_text())
    gold = [r["query"] for f in ("train_spider.json", "dev.json") for r in json.loads((fixture / f).read_text())]
    for sql in gold + RUNNING:
        conn.execute(sql).fetchall()  # each query runs
    conn.close()
    c = NameConstraint(schema_names(db=db))
    for sql in gold + RUNNING:
        assert feed(c, sql) == (None, True), sql
        assert feed(c, sql, pieces=4) == (None, True), sql


KEYS = [("concert", "singer_id", "singer", "singer_id")]
SCHEMA_IDS = {"singer": ["singer_id", "name", "id"], "concert": ["concert_id", "singer_id", "id", "year"]}


@pytest.mark.parametrize("sql, stop", [
    # The right side of a join condition is a column the left one is linked to by a key...
    ("SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.singer_id = T2.id",
     "SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.singer_id = T2.i"),
    # ... and the left side a column linked to the table the JOIN adds.
    ("SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.id = T2.singer_id",
     "SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.i"),
    ("SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T2.concert_id = T1.singer_id",
     "SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T2.c"),
])
def test_join_conditions_follow_declared_keys(sql, stop):
    c = NameConstraint(SCHEMA_IDS, keys=KEYS)
    at, _ = feed(c, sql)
    assert at is not None and sql[: at + 1] == stop
    assert feed(NameConstraint(SCHEMA_IDS), sql) == (None, True)  # without keys: any column


@pytest.mark.parametrize("sql", [
    "SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.singer_id = T2.singer_id WHERE T2.id = 1",
    "SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T2.singer_id = T1.singer_id AND T2.year > 2000",
    "SELECT singer.name FROM singer JOIN concert ON singer.singer_id = concert.singer_id",
])
def test_joins_on_keys_are_allowed(sql):
    assert feed(NameConstraint(SCHEMA_IDS, keys=KEYS), sql) == (None, True)
