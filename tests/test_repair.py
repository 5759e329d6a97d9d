"""Value repair: near-miss text literals get the cell they were meant to copy; everything the
model got right, and every unclear case, is left alone. End to end through evaluate --fix-values."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mlx_text2sql import evaluate
from mlx_text2sql.hints import ValueIndex
from mlx_text2sql.repair import Repairer, fix_values

sys.path.insert(0, str(Path(__file__).parent))
from evalkit import one_record, scripted_replies  # noqa: E402
from sqlitefiles import make_sqlite  # noqa: E402


@pytest.fixture()
def db(tmp_path):
    games = '"Visitor" TEXT COLLATE NOCASE, "Home" TEXT COLLATE NOCASE, "Date" TEXT, "Score" REAL'
    return make_sqlite(tmp_path / "nhl.sqlite", ("games", games, [
        ("Montreal Canadiens", "Boston Bruins", "February 12", 3.0),
        ("Toronto Maple Leafs", "Montreal Canadiens", "February 14", 2.0),
        ("Twickenham , London", "Sofia", "March 1", 1.0),
        ("Buffalo Sabres", "Boston Bruins", "March 2", 4.0),
        ("Buffalo Sabers", "Ottawa", "March 3", 5.0),
    ]), ("teams", '"Team" TEXT, "City" TEXT', [("Montreal Canadiens", "Montreal")]))


def test_a_miscopied_value_gets_the_cell(db):
    with ValueIndex(db) as index:
        sql, fixes = fix_values("SELECT \"Home\" FROM \"games\" WHERE \"Visitor\" = 'montreal canadas' "
                                "AND \"Date\" = 'february 12'", index, "home team when montreal canadiens visited?")
    assert sql == "SELECT \"Home\" FROM \"games\" WHERE \"Visitor\" = 'Montreal Canadiens' AND \"Date\" = 'february 12'"
    assert [(f.column, f.old, f.new) for f in fixes] == [("Visitor", "montreal canadas", "Montreal Canadiens")]


@pytest.mark.parametrize("sql, question", [
    # a cell of its column, in any case
    ("SELECT \"Home\" FROM \"games\" WHERE \"Visitor\" = 'MONTREAL canadiens'", ""),
    # word for word in the question: copied, not miscopied (the data spells it 'Twickenham , London')
    ("SELECT \"Home\" FROM \"games\" WHERE \"Visitor\" = 'twickenham, london'", "who hosted twickenham, london?"),
    # nothing close enough
    ("SELECT \"Home\" FROM \"games\" WHERE \"Visitor\" = 'vancouver'", ""),
    # two cells about as close: no clear winner ('Buffalo Sabres' / 'Buffalo Sabers')
    ("SELECT \"Home\" FROM \"games\" WHERE \"Visitor\" = 'buffalo sabrs'", ""),
    # not an equality
    ("SELECT \"Home\" FROM \"games\" WHERE \"Visitor\" LIKE 'montreal canadas'", ""),
    # a number compared with a number column
    ("SELECT \"Home\" FROM \"games\" WHERE \"Score\" = 3", ""),
    # a column no table of the query has
    ("SELECT \"Home\" FROM \"games\" WHERE \"Town\" = 'montreal canadas'", ""),
    # not SQL at all
    ("SELEC Home FROM", ""),
])
def test_everything_else_is_left_alone(db, sql, question):
    with ValueIndex(db) as index:
        assert fix_values(sql, index, question) == (sql, [])


def test_aliases_and_tables_of_a_join_are_resolved(db):
    sql = ("SELECT T2.City FROM games AS T1 JOIN teams AS T2 ON T1.Visitor = T2.Team "
           "WHERE T2.Team = 'montreal canadien'")
    with ValueIndex(db) as index:
        fixed, fixes = fix_values(sql, index)
    assert fixed.endswith("WHERE T2.Team = 'Montreal Canadiens'")
    assert fixes[0].table == "teams"


def test_repairer_without_a_database_changes_nothing(tmp_path):
    r = Repairer()
    assert r.fix("SELECT 1", None) == ("SELECT 1", [])
    assert r.fix("SELECT 1", tmp_path / "missing.sqlite") == ("SELECT 1", [])


def test_evaluate_fix_values_reports_both_accuracies(db, tiny_llama, tmp_path, capsys, monkeypatch):
    reply = "SELECT Home FROM games WHERE Visitor = 'Montreal Canadien'"
    scripted_replies(monkeypatch, reply)  # what a slightly miscopying model says
    schema = 'CREATE TABLE "games" ("Visitor" TEXT, "Home" TEXT, "Date" TEXT, "Score" REAL);'
    gold = "SELECT \"Home\" FROM \"games\" WHERE \"Visitor\" = 'montreal canadiens'"
    data = one_record(tmp_path, "home team when montreal canadiens visited?", schema, gold,
                      source="wikisql", id="g0", db_path=db.name, table="games")
    base = ["--data", str(data), "--model", str(tiny_llama), "--quiet"]
    assert evaluate.main(base) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "execution_accuracy: 0.000"
    out = tmp_path / "pred.jsonl"
    assert evaluate.main(base + ["--fix-values", "--output", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert stdout.strip().splitlines()[-1] == "execution_accuracy: 1.000"
    assert "value repair: 1 predictions changed (1 now match, 0 no longer do); execution accuracy without it 0.0%" in stdout
    row = json.loads(out.read_text())
    assert row["pred_sql_raw"] == reply and row["match_raw"] is False and row["match"] is True
    assert row["value_fixes"] == [["Visitor", "Montreal Canadien", "Montreal Canadiens"]]


def test_generate_fix_values(db, tiny_llama, tmp_path, capsys, monkeypatch):
    from mlx_text2sql import generate

    reply = "SELECT Home FROM games WHERE Visitor = 'Montreal Canadien'"
    scripted_replies(monkeypatch, reply)
    argv = ["--model", str(tiny_llama), "--db", str(db), "-q", "who hosted montreal?", "--execute"]
    assert generate.main(argv) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == reply and "Boston Bruins" not in out  # no such visitor: no rows
    assert generate.main(argv + ["--fix-values"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == "SELECT Home FROM games WHERE Visitor = 'Montreal Canadiens'"
    assert "Boston Bruins" in out
    assert "value repair: Visitor = 'Montreal Canadien' -> 'Montreal Canadiens'" in err
    # batch mode: the record's database; the raw prediction is kept beside the repaired one
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"question": "who hosted montreal?", "db_path": str(db), "table": "games"}) + "\n")
    assert generate.main(["--model", str(tiny_llama), "--input", str(inp), "--fix-values", "--quiet"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["prediction"].endswith("'Montreal Canadiens'") and rec["prediction_raw"] == reply
