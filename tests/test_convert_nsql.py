"""NSQL converter: NumbersStation and DB-GPT-Hub record shapes, schema parsing, empty
databases per schema."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from mlx_text2sql.errors import InputError
from mlx_text2sql.sources.common import Where
from mlx_text2sql.sources.nsql import (MARKER, describe_tables, parse_record,
                                       question_from_instruction)

from convertkit import converter

FIX = Path(__file__).parent / "fixtures" / "convert" / "nsql" / "nsql.jsonl"
SYSTEM = ("You translate questions into SQLite queries. "
          "Answer with one SQL query over the given schema and nothing else.")


convert = converter("nsql", FIX)


def test_golden_records(tmp_path):
    out = tmp_path / "out"
    recs = convert(out)
    assert sorted(recs) == ["nsql-1", "nsql-2", "nsql-3", "nsql-4"]
    schema = 'CREATE TABLE "stadium" (\n  "name" VARCHAR,\n  "capacity" INT\n);'
    q = "What is the largest stadium capacity?"
    rec = recs["nsql-1"]
    key = rec["meta"]["schema_key"]
    assert key.startswith("s") and len(key) == 13
    assert rec == {
        "messages": [{"role": "system", "content": SYSTEM},
                     {"role": "user", "content": f"Schema:\n{schema}\n\nQuestion: {q}"},
                     {"role": "assistant", "content": "SELECT MAX(capacity) FROM stadium"}],
        "question": q, "schema": schema, "sql": "SELECT MAX(capacity) FROM stadium",
        "source": "nsql", "id": "nsql-1", "db_path": f"databases/{key}.sqlite", "table": None,
        "db_id": key,
        "meta": {"split": "nsql", "nsql_source": "sql_create_context", "has_rows": False,
                 "schema_key": key},
    }
    # NSQL prompt ending in SELECT: the output continues it; the question spans two lines
    r2 = recs["nsql-2"]
    assert r2["question"] == "Which team has the player with the most goals?"
    assert r2["sql"] == ("SELECT T1.name FROM team AS T1 JOIN player AS T2 ON T1.team_id = "
                         "T2.team_id ORDER BY T2.goals DESC LIMIT 1")
    assert r2["schema"] == (
        'CREATE TABLE "team" (\n  "team_id" INT,\n  "name" TEXT,\n  PRIMARY KEY ("team_id")\n);\n\n'
        'CREATE TABLE "player" (\n  "player_id" INT,\n  "team_id" INT,\n  "goals" INT,\n'
        '  PRIMARY KEY ("player_id"),\n  FOREIGN KEY ("team_id") REFERENCES "team"("team_id")\n);')
    # DB-GPT-Hub: schema sentences, question in 'input', db_id kept (and used as the group)
    r3 = recs["nsql-3"]
    assert r3["question"] == "How many members are older than 30?"
    assert r3["db_id"] == "club_db" and r3["meta"]["schema_from"] == "description"
    assert 'FOREIGN KEY ("club_id") REFERENCES "club"("club_id")' in r3["schema"]
    # DB-GPT-Hub with CREATE TABLE, instruction ending in SELECT, question in 'input'
    r4 = recs["nsql-4"]
    assert (r4["question"], r4["sql"], r4["db_id"]) == (
        "Which city has the most people?", "SELECT name FROM city ORDER BY population DESC LIMIT 1", "geo")
    # every gold query runs on its (empty) database
    for r in recs.values():
        con = sqlite3.connect(out / r["db_path"])
        assert con.execute(r["sql"]).fetchall() in ([], [(0,)], [(None,)])
        assert "gold_error" not in r["meta"]


def test_no_build_db(tmp_path):
    recs = convert(tmp_path / "out", "--no-build-db")
    assert all(r["db_path"] is None for r in recs.values())
    assert not (tmp_path / "out" / "databases").exists()


def test_databases_are_shared_and_reused(tmp_path):
    src = tmp_path / "in.jsonl"
    line = FIX.read_text().splitlines()[0]
    src.write_text(line + "\n" + line.replace("largest", "smallest").replace("MAX", "MIN") + "\n")
    out = tmp_path / "out"
    recs = convert(out, src=src)
    assert len({r["db_path"] for r in recs.values()}) == 1  # one schema, one database
    report = json.loads((out / "convert_report.json").read_text())
    assert "1 built, 0 reused" in " ".join(report["notes"])
    convert(out, src=src)
    report = json.loads((out / "convert_report.json").read_text())
    assert "0 built, 1 reused" in " ".join(report["notes"])


def test_gold_that_does_not_fit_its_schema_is_flagged(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"instruction": f"CREATE TABLE t (a INT)\n\n{MARKER}\n\n-- What is b?\n",
                               "output": "SELECT b FROM t"}) + "\n")
    recs = convert(tmp_path / "out", src=src)
    assert recs["in-1"]["meta"]["gold_error"] == "no such column: b"


@pytest.mark.parametrize("instruction, question", [
    (f"CREATE TABLE t (a INT)\n\n{MARKER}\n\n-- How many rows?\n", "How many rows?"),
    (f"CREATE TABLE t (a INT)\n{MARKER}\n-- first part\n-- second part\nSELECT", "first part second part"),
    ("CREATE TABLE t (a INT)\n-- ignore me\nSELECT 1;\n-- What is a?", "What is a?"),
    (f"CREATE TABLE t (a INT)\n\n{MARKER}\n\n", ""),
])
def test_question_from_instruction(instruction, question):
    assert question_from_instruction(instruction) == question


@pytest.mark.parametrize("rec, message", [
    ({"output": "SELECT 1"}, "missing field 'instruction'"),
    ({"instruction": "CREATE TABLE t (a INT)\n-- q?", "output": 3}, "field 'output' must be a string"),
    ({"instruction": "CREATE TABLE t (a INT)\n-- q?", "output": "  "}, "holds no SQL"),
    ({"instruction": "CREATE TABLE t (a INT)", "output": "SELECT a FROM t"}, "no question found"),
    ({"instruction": f"{MARKER}\n-- q?", "output": "SELECT 1"}, "no schema found"),
    ({"instruction": "CREATE TABLE t (a INT)\n-- q?", "output": "SELECT 1", "input": ["x"]}, "field 'input' must be a string"),
    ({"instruction": "CREATE TABLE t (a INT)\n-- q?", "output": "SELECT 1", "history": "x"}, "'history' must be a list"),
])
def test_bad_records(rec, message):
    with pytest.raises(InputError, match=message) as e:
        parse_record(rec, Where("n.jsonl", 4))
    assert str(e.value).startswith("n.jsonl:4: ")


def test_describe_tables():
    text = ("db contains tables such as a, b. Table a has columns such as id, name. id is the "
            "primary key.\nTable b has columns such as id, a_id, score. id is the primary key.\n"
            "The a_id of b is the foreign key of id of a.\n")
    a, b = describe_tables(text)
    assert (a.name, [c.name for c in a.columns], a.primary_key) == ("a", ["id", "name"], ["id"])
    assert (b.name, [c.name for c in b.columns], b.primary_key) == ("b", ["id", "a_id", "score"], ["id"])
    assert b.foreign_keys == [("a_id", "a", "id")] and a.foreign_keys == []
