"""Name repair: unknown tables and columns get the database's name they most plausibly mean;
known names, output aliases and unclear cases are left alone. End to end through evaluate and
generate --fix-names."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mlx_text2sql import evaluate
from mlx_text2sql.name_repair import best_name, fix_names, read_schema, similarity
from mlx_text2sql.repair import Repairer

sys.path.insert(0, str(Path(__file__).parent))
from evalkit import one_record, scripted_replies  # noqa: E402
from sqlitefiles import make_sqlite  # noqa: E402

SCHEMA = {
    "singer": ["Singer_ID", "Name", "Country", "Song_Name", "Age"],
    "concert": ["concert_ID", "concert_Name", "Theme", "Stadium_ID", "Year"],
    "singer_in_concert": ["concert_ID", "Singer_ID"],
    "stadium": ["Stadium_ID", "Location", "Name", "Capacity"],
}


@pytest.mark.parametrize("sql,question,fixed,changes", [
    # the table's own name written into its column: singer_name in singer is Name
    ("SELECT singer_name FROM singer WHERE Country = 'France'", "names of singers from France",
     "SELECT \"Name\" FROM singer WHERE Country = 'France'", [("column", "singer_name", "Name")]),
    # through an alias of a join
    ("SELECT T2.stadium_name FROM concert AS T1 JOIN stadium AS T2 ON T1.Stadium_ID = T2.Stadium_ID",
     "stadium of each concert",
     "SELECT T2.\"Name\" FROM concert AS T1 JOIN stadium AS T2 ON T1.Stadium_ID = T2.Stadium_ID",
     [("column", "stadium_name", "Name")]),
    # a plural table
    ("SELECT Name FROM singers", "list the singers", "SELECT Name FROM \"singer\"",
     [("table", "singers", "singer")]),
    # the predicted words are the candidate's words
    ("SELECT song FROM singer", "which songs", "SELECT \"Song_Name\" FROM singer",
     [("column", "song", "Song_Name")]),
    ("SELECT concert_year FROM concert", "years", "SELECT \"Year\" FROM concert",
     [("column", "concert_year", "Year")]),
    # a table fixed first, then its column looked up in it
    ("SELECT T1.capacities FROM stadiums AS T1", "capacity",
     "SELECT T1.\"Capacity\" FROM \"stadium\" AS T1",
     [("table", "stadiums", "stadium"), ("column", "capacities", "Capacity")]),
])
def test_unknown_names_get_the_database_names(sql, question, fixed, changes):
    out, fixes = fix_names(sql, SCHEMA, question)
    assert out == fixed
    assert [(f.kind, f.old, f.new) for f in fixes] == changes


@pytest.mark.parametrize("sql,question", [
    ("SELECT Name FROM singer", ""),                       # nothing unknown: unchanged text
    ("select name from SINGER where age > 3", ""),         # names compared as SQLite does
    ("SELECT count(*) AS total FROM singer ORDER BY total", ""),  # an output alias
    ("SELECT * FROM singer", ""),
    ("SELECT capacity FROM singer JOIN stadium", ""),      # known in one of the query's tables
    ("SELECT T9.Name FROM singer AS T1", ""),              # an alias of no table: left alone
    ("SELECT budget FROM singer", ""),                     # nothing similar
    ("SELECT name FROM nowhere_at_all", ""),               # no similar table
    ("SELECT FROM WHERE", ""),                             # does not parse
    ("WITH s AS (SELECT Name FROM singer) SELECT Name FROM s", ""),  # a CTE is a table
])
def test_everything_else_is_left_alone(sql, question):
    assert fix_names(sql, SCHEMA, question) == (sql, [])


def test_ties_are_left_alone_unless_the_question_decides():
    schema = {"t": ["home_city", "away_city"]}
    assert fix_names("SELECT city FROM t", schema, "") == ("SELECT city FROM t", [])
    out, fixes = fix_names("SELECT city FROM t", schema, "which city was the home side from")
    assert out == 'SELECT "home_city" FROM t' and fixes[0].new == "home_city"
    # the same column in two of the query's tables: which one is meant is unclear
    two = {"a": ["x_name"], "b": ["x_name"]}
    assert fix_names("SELECT name FROM a JOIN b", two, "")[1] == []


def test_similarity_and_best_name():
    assert similarity("students", "student") == 1.0 and similarity("cities", "City") == 1.0
    assert 0.8 < similarity("capacty", "capacity") < 1.0
    assert similarity("name", "singer_name") == pytest.approx(0.875)
    assert similarity("StuID", "stu_id") == 1.0  # camelCase and snake_case words alike
    assert similarity("", "x") == 0.0
    assert best_name("stadium_name", [("stadium", "Name"), ("stadium", "Stadium_ID")], set())[0] == ("stadium", "Name")
    assert best_name("zzz", [("t", "Name")], set()) == (None, 0.0) or best_name("zzz", [("t", "Name")], set())[0] is None


@pytest.fixture()
def db(tmp_path):
    return make_sqlite(tmp_path / "music.sqlite",
                       ("singer", '"Singer_ID" INTEGER PRIMARY KEY, "Name" TEXT, "Country" TEXT',
                        [(1, "Joe Sharp", "Netherlands"), (2, "Timbaland", "United States")]),
                       ("concert", '"concert_ID" INTEGER, "Singer_ID" INTEGER, "Year" TEXT', [(1, 2, "2014")]))


def test_read_schema_and_the_repairer_order(db, tmp_path):
    assert read_schema(db) == {"singer": ["Singer_ID", "Name", "Country"],
                               "concert": ["concert_ID", "Singer_ID", "Year"]}
    assert read_schema(tmp_path / "missing.sqlite") == {}
    r = Repairer()
    sql = "SELECT singer_name FROM singers WHERE country = 'Netherland'"
    # names first, so value repair finds the column the repaired query names
    out, fixes = r.fix(sql, db, "", values=True, names=True)
    assert out == "SELECT \"Name\" FROM \"singer\" WHERE country = 'Netherlands'"
    assert [type(f).__name__ for f in fixes] == ["NameFix", "NameFix", "Fix"]
    assert r.fix(sql, db, "", values=True, names=False) == (sql, [])  # the default: values only
    assert r.configured(values=False, names=True).fix(sql, db)[0] == \
        "SELECT \"Name\" FROM \"singer\" WHERE country = 'Netherland'"
    r.close()


def test_evaluate_fix_names_reports_both_accuracies(db, tiny_llama, tmp_path, capsys, monkeypatch):
    reply = "SELECT singer_name FROM singer WHERE country = 'Netherlands'"
    scripted_replies(monkeypatch, reply)
    schema = 'CREATE TABLE "singer" ("Singer_ID" INTEGER, "Name" TEXT, "Country" TEXT);'
    gold = "SELECT Name FROM singer WHERE Country = 'Netherlands'"
    data = one_record(tmp_path, "What are the names of the singers from the Netherlands?", schema, gold,
                      source="spider", id="s0", db_path=db.name, db_id="music")
    base = ["--data", str(data), "--model", str(tiny_llama), "--quiet"]
    assert evaluate.main(base) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "execution_accuracy: 0.000"
    out = tmp_path / "pred.jsonl"
    assert evaluate.main(base + ["--fix-names", "--fix-values", "--output", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert stdout.strip().splitlines()[-1] == "execution_accuracy: 1.000"
    assert "name repair: 1 predictions had 1 unknown table or column names replaced" in stdout
    assert ("name and value repair: 1 predictions changed (1 now match, 0 no longer do); "
            "execution accuracy without it 0.0%") in stdout
    row = json.loads(out.read_text())
    assert row["pred_sql_raw"] == reply and row["match_raw"] is False and row["match"] is True
    assert row["name_fixes"] == [["column", "singer_name", "Name"]] and "value_fixes" not in row


def test_generate_fix_names(db, tiny_llama, capsys, monkeypatch):
    from mlx_text2sql import generate

    scripted_replies(monkeypatch, "SELECT singer_name FROM singer")
    argv = ["--model", str(tiny_llama), "--db", str(db), "-q", "names of the singers?", "--execute"]
    assert generate.main(argv) == 2  # the raw query fails on the database
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == "SELECT singer_name FROM singer" and "no such column: singer_name" in err
    assert generate.main(argv + ["--fix-names"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == 'SELECT "Name" FROM singer'
    assert "Joe Sharp" in out and "Timbaland" in out
    assert "name repair: column 'singer_name' -> 'Name' (a name of the database, table singer" in err
