"""Name repair's grounding: a column the query looks for in the wrong table is qualified by the
table of its SELECT that has it, or its table is joined on the one foreign key that links it,
and a join on a missing column is re-keyed; unclear cases, ``*`` selects, ON clauses and
queries that run are left alone. Checked by running the repaired SQL on a small database with
declared keys, and through generate --fix-names."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

from mlx_text2sql import generate
from mlx_text2sql.name_repair import fix_names, read_foreign_keys, read_schema
from mlx_text2sql.repair import Repairer

sys.path.insert(0, str(Path(__file__).parent))
from evalkit import scripted_replies  # noqa: E402

SCRIPT = """
CREATE TABLE artists (id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE albums (id INTEGER PRIMARY KEY, title TEXT, artist_id INTEGER REFERENCES artists(id));
CREATE TABLE labels (label_id INTEGER PRIMARY KEY, label_name TEXT);
CREATE TABLE people (People_ID INTEGER PRIMARY KEY, Name TEXT, Weight REAL);
CREATE TABLE entrepreneur (E_ID INTEGER PRIMARY KEY, People_ID INTEGER REFERENCES people, Money REAL);
CREATE TABLE club (club_id INTEGER PRIMARY KEY, city TEXT);
CREATE TABLE venue (venue_id INTEGER PRIMARY KEY, city TEXT);
CREATE TABLE gig (gig_id INTEGER PRIMARY KEY, club_id INTEGER REFERENCES club(club_id),
                  venue_id INTEGER REFERENCES venue(venue_id), year INTEGER);
INSERT INTO artists VALUES (1, 'Aerosmith'), (2, 'Queen');
INSERT INTO albums VALUES (1, 'Big Ones', 1), (2, 'Toys', 1), (3, 'Jazz', 2);
INSERT INTO people VALUES (1, 'Ann', 80), (2, 'Bob', 90);
INSERT INTO entrepreneur VALUES (1, 1, 10), (2, 2, 20);
INSERT INTO club VALUES (1, 'Oslo');
INSERT INTO venue VALUES (1, 'Rome');
INSERT INTO gig VALUES (1, 1, 1, 2020);
"""


@pytest.fixture()
def db(tmp_path) -> Path:
    path = tmp_path / "music.sqlite"
    con = sqlite3.connect(path)
    con.executescript(SCRIPT)
    con.close()
    return path


def repaired(db: Path, sql: str, question: str = ""):
    out, fixes = fix_names(sql, read_schema(db), question, read_foreign_keys(db))
    return out, [(f.kind, f.table, f.old, f.new) for f in fixes]


def rows(db: Path, sql: str):
    con = sqlite3.connect(db)
    try:
        return sorted(con.execute(sql).fetchall())
    finally:
        con.close()


def test_read_foreign_keys(db, tmp_path):
    assert sorted(read_foreign_keys(db)) == [
        ("albums", "artist_id", "artists", "id"),
        ("entrepreneur", "People_ID", "people", "People_ID"),  # REFERENCES people: its primary key
        ("gig", "club_id", "club", "club_id"),
        ("gig", "venue_id", "venue", "venue_id"),
    ]
    assert read_foreign_keys(tmp_path / "missing.sqlite") == []


def test_a_column_of_another_table_of_the_select_gets_that_table():
    sql = ("SELECT T1.Name FROM people AS T1 JOIN entrepreneur AS T2 ON T1.People_ID = T2.People_ID "
           "ORDER BY T2.Weight DESC LIMIT 1")
    schema = {"people": ["People_ID", "Name", "Weight"], "entrepreneur": ["E_ID", "People_ID", "Money"]}
    out, fixes = fix_names(sql, schema)
    assert out.endswith("ORDER BY T1.Weight DESC LIMIT 1")
    assert [(f.kind, f.old, f.new) for f in fixes] == [("qualifier", "T2.Weight", "T1.Weight")]


def test_an_unjoined_table_is_joined_on_its_foreign_key(db):
    sql = "SELECT title FROM albums WHERE name = 'Aerosmith'"
    with pytest.raises(sqlite3.OperationalError, match="no such column: name"):
        rows(db, sql)
    out, fixes = repaired(db, sql)
    assert fixes == [("join", "artists", "name", "artists.name")]
    assert 'JOIN "artists" ON albums."artist_id" = "artists"."id"' in out
    assert rows(db, out) == [("Big Ones",), ("Toys",)]


def test_a_join_keeps_the_query_s_aliases_and_its_columns_unambiguous(db):
    out, fixes = repaired(db, "SELECT T1.title FROM albums AS T1 WHERE T1.name = 'Queen'")
    assert fixes == [("join", "artists", "T1.name", "T2.name")]
    assert 'JOIN "artists" AS T2 ON T1."artist_id" = T2."id" WHERE T2.name' in out
    assert rows(db, out) == [("Jazz",)]
    # `id` is a column of both tables once artists is joined: it keeps its own table
    out, _ = repaired(db, "SELECT id, title FROM albums WHERE name = 'Queen'")
    assert out.startswith("SELECT albums.id, title FROM albums JOIN")
    assert rows(db, out) == [(3, "Jazz")]
    # the key followed the other way: people.People_ID is referenced by entrepreneur
    out, fixes = repaired(db, "SELECT Name FROM entrepreneur WHERE Money > 15")
    assert fixes == [("join", "people", "Name", "people.Name")] and rows(db, out) == [("Bob",)]


@pytest.mark.parametrize("sql", [
    "SELECT * FROM albums WHERE name = 'Queen'",           # the join would change the columns
    # the subquery's own SELECT: no key links gig to artists
    "SELECT count(*) FROM albums WHERE artist_id IN (SELECT gig_id FROM gig WHERE name = 'Queen')",
    "SELECT year FROM gig WHERE city = 'Oslo'",            # club and venue both have city
    "SELECT title FROM albums WHERE label_name = 'EMI'",   # labels is linked to nothing
])
def test_unclear_or_unsafe_cases_are_left_alone(db, sql):
    assert repaired(db, sql) == (sql, [])


def test_a_join_on_a_column_its_table_lacks_gets_the_foreign_key(db):
    sql = "SELECT T1.title FROM albums AS T1 JOIN artists AS T2 ON T1.name = T2.name WHERE T2.name = 'Queen'"
    out, fixes = repaired(db, sql)
    assert fixes == [("key", "artists", "T1.name = T2.name", 'T1."artist_id" = T2."id"')]
    assert rows(db, out) == [("Jazz",)]
    # an ON clause keeps its qualifiers (T2.Weight is not moved to T1, which would compare
    # T1's columns with each other): the key replaces the condition
    sql = "SELECT T1.Name FROM people AS T1 JOIN entrepreneur AS T2 ON T1.People_ID = T2.Weight"
    assert repaired(db, sql)[1] == [("key", "entrepreneur", "T1.People_ID = T2.Weight",
                                     'T1."People_ID" = T2."People_ID"')]
    # the second join of three: linked to gig, the table before it
    sql = "SELECT T3.city FROM gig AS T1 JOIN club AS T2 ON T1.club_id = T2.club_id JOIN venue AS T3 ON T1.gig_id = T3.gig_id"
    out, fixes = repaired(db, sql)
    assert fixes == [("key", "venue", "T1.gig_id = T3.gig_id", 'T1."venue_id" = T3."venue_id"')]
    assert rows(db, out) == [("Rome",)]


@pytest.mark.parametrize("sql", [
    "SELECT T1.title FROM albums AS T1 JOIN artists AS T2 ON T1.id = T2.id",            # both columns exist
    "SELECT T1.title FROM albums AS T1 JOIN labels AS T2 ON T1.label = T2.label_id",    # no key links them
    "SELECT T2.title FROM artists AS T1 JOIN albums AS T2 ON T1.id > T2.nothing",       # not an equality
    # a correlated subquery's ON reads the outer query's column: the query runs as it is
    "SELECT Name FROM people WHERE People_ID IN (SELECT T1.id FROM albums AS T1 JOIN artists AS T2 ON T2.id = Weight)",
])
def test_a_join_condition_is_kept_when_no_key_clearly_replaces_it(db, sql):
    assert [f for f in repaired(db, sql)[1] if f[0] == "key"] == []


def test_a_query_that_runs_is_never_changed(db):
    for sql in ["SELECT Name FROM people WHERE People_ID IN "
                "(SELECT T1.id FROM albums AS T1 JOIN artists AS T2 ON T2.id = Weight)",
                "SELECT title FROM albums WHERE EXISTS (SELECT 1 FROM artists WHERE id = artist_id)",
                "SELECT T1.title, T2.name FROM albums AS T1 JOIN artists AS T2 ON T1.artist_id = T2.id"]:
        rows(db, sql)  # runs
        assert repaired(db, sql) == (sql, [])


def test_the_repairer_reads_the_keys_once_and_joins(db):
    r = Repairer()
    sql = "SELECT title FROM albums WHERE name = 'Aerosmth'"
    out, fixes = r.fix(sql, db, "", values=True, names=True)  # the join first, then the value
    assert [type(f).__name__ for f in fixes] == ["NameFix", "Fix"]
    assert rows(db, out) == [("Big Ones",), ("Toys",)]
    r.close()


def test_generate_names_the_join_it_made(db, tiny_llama, capsys, monkeypatch):
    scripted_replies(monkeypatch, "SELECT title FROM albums WHERE name = 'Queen'")
    argv = ["--model", str(tiny_llama), "--db", str(db), "-q", "albums by Queen?", "--execute", "--fix-names"]
    assert generate.main(argv) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith('SELECT title FROM albums JOIN "artists" ON') and "Jazz" in out
    assert "name repair: join 'name' -> 'artists.name' (table artists joined on its foreign key)" in err
