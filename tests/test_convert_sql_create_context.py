"""sql-create-context converter and the CREATE TABLE parsing it shares with NSQL."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from mlx_text2sql.convert import main
from mlx_text2sql.example import Column
from mlx_text2sql.sources.common import (merge_tables, parse_create_table, parse_schema_text,
                                         split_create_statements)
from mlx_text2sql.sources.sql_create_context import unwrap_answer

from convertkit import converter

FIX = Path(__file__).parent / "fixtures" / "convert" / "sql_create_context" / "sqlqa.jsonl"


convert = converter("sql-create-context", FIX)


def test_golden_records(tmp_path):
    out = tmp_path / "out"
    recs = convert(out)
    r1 = recs["sqlqa-1"]
    key = r1["meta"]["schema_key"]
    assert {k: v for k, v in r1.items() if k != "messages"} == {
        "question": "How many heads of the departments are older than 56 ?",
        "schema": 'CREATE TABLE "head" (\n  "age" INT\n);',
        "sql": "SELECT COUNT(*) FROM head WHERE age > 56",
        "source": "sql-create-context", "id": "sqlqa-1", "db_path": f"databases/{key}.sqlite",
        "table": None, "db_id": key,
        "meta": {"split": "sqlqa", "has_rows": False, "schema_key": key},
    }
    # a table declared twice is merged (no database could hold both); ';' is dropped
    r2 = recs["sqlqa-2"]
    assert r2["schema"] == ('CREATE TABLE "song" (\n  "artist_name" VARCHAR,\n  "languages" VARCHAR\n);\n\n'
                            'CREATE TABLE "artist" (\n  "artist_name" VARCHAR,\n  "country" VARCHAR\n);')
    assert r2["sql"].endswith("T2.languages = 'english'")
    con = sqlite3.connect(out / r2["db_path"])
    assert con.execute(r2["sql"]).fetchall() == []
    # statements sqlglot cannot read are kept verbatim; SQLite's refusal is recorded
    r3 = recs["sqlqa-3"]
    assert r3["schema"] == ("CREATE TABLE products (name VARCHAR, added_on DATE) WITHOUT ROWID;\n\n"
                            "CREATE TABLE x AS SELECT 1;")
    assert r3["meta"]["unparsed_tables"] == ["products", "x"]
    assert r3["db_path"] is None and "PRIMARY KEY missing" in r3["meta"]["db_error"]
    assert r3["sql"] == "SELECT name FROM products ORDER BY added_on DESC LIMIT 1"


def test_json_array_input_names_record_lines(tmp_path):
    recs = [json.loads(line) for line in FIX.read_text().splitlines()]
    recs.insert(1, {"question": "no context"})
    src = tmp_path / "sql_create_context_v4.json"
    src.write_text(json.dumps(recs, indent=2))
    out = tmp_path / "out"
    got = convert(out, src=src)
    assert len(got) == 3
    report = json.loads((out / "convert_report.json").read_text())
    # the second element starts on line 7 of the indented array
    assert report["skipped_records"] == [f"{src}:7: missing field 'context'"]


@pytest.mark.parametrize("answer, sql", [
    ("[SQL] SELECT 1 [/SQL]", "SELECT 1"),
    ("[SQL]SELECT a\nFROM t;[/SQL]", "SELECT a\nFROM t"),
    ("SELECT 2;", "SELECT 2"),
    ("  select 3  ", "select 3"),
])
def test_unwrap_answer(answer, sql):
    assert unwrap_answer(answer) == sql


@pytest.mark.parametrize("text, count", [
    ("CREATE TABLE a (x INT); CREATE TABLE b (y INT)", 2),
    ("CREATE TABLE a (x INT)\n\nCREATE TABLE b (y INT)", 2),
    ("CREATE TABLE a (x INT)CREATE TABLE b (y INT)", 2),
    ("-- CREATE TABLE c (z INT)\nCREATE TABLE a (x VARCHAR(20), \"y)\" INT)", 1),
    ("/* CREATE TABLE c (z INT) */ CREATE TABLE a (note TEXT DEFAULT 'CREATE TABLE (')", 1),
    ("SELECT 1", 0),
])
def test_split_create_statements(text, count):
    assert len(split_create_statements(text)) == count


def test_parse_create_table_keys_and_types():
    t = parse_create_table('CREATE TABLE "t" (id INTEGER PRIMARY KEY, "Name" VARCHAR(20), '
                           'owner INT REFERENCES people(pid), FOREIGN KEY (Name) REFERENCES x(y))')
    assert t.name == "t" and t.create_sql is None
    assert t.columns == [Column("id", "INT"), Column("Name", "VARCHAR(20)"), Column("owner", "INT")]
    assert t.primary_key == ["id"]
    assert t.foreign_keys == [("owner", "people", "pid"), ("Name", "x", "y")]


def test_merge_tables_dedupes_case_insensitively():
    text = "CREATE TABLE p (Price INT, price INT, name TEXT); CREATE TABLE P (code TEXT)"
    tables, changed = merge_tables([parse_create_table(s) for s in split_create_statements(text)])
    assert changed and len(tables) == 1
    assert [c.name for c in tables[0].columns] == ["Price", "name", "code"]
    assert parse_schema_text(text) == tables
    assert merge_tables(parse_schema_text("CREATE TABLE a (x INT)"))[1] is False


def test_file_that_is_not_utf8_is_one_clear_error(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_bytes(FIX.read_bytes() + b'{"question": "caf\xe9"}\n')
    assert main(["sql-create-context", str(src), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {src}:4: not UTF-8 text (byte 0xe9); save the file as UTF-8"


def test_json_lines_under_a_json_name(tmp_path):
    src = tmp_path / "in.json"
    src.write_text('{"question": \n' + FIX.read_text())
    out = tmp_path / "o"
    assert len(convert(out, src=src)) == 3
    report = json.loads((out / "convert_report.json").read_text())
    assert report["skipped"] == 1 and report["skipped_records"][0].startswith(f"{src}:1: malformed JSON line")
