"""WikiSQL converter: exact records, SQL that runs and returns the official answer, the
database it builds, and the behaviour of the official engine we reproduce (or do not)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from mlx_text2sql.convert import main
from mlx_text2sql.errors import InputError
from mlx_text2sql.sources import SourceOptions
from mlx_text2sql.prompts import render_schema
from mlx_text2sql.sources.common import Problems, Where, tables_from_database
from mlx_text2sql.sources.wikisql import (column_names, logical_form_to_sql, official_number,
                                          parse_table, stored_value, table_sql_name)

FIX = Path(__file__).parent / "fixtures" / "convert" / "wikisql"
SAMPLE = Path(__file__).parent.parent / "data" / "sample" / "wikisql"
SHARED = Path(__file__).parent.parent.parent / "shared" / "datasets" / "wikisql"


def load_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def convert(tmp_path, *args, src=FIX):
    out = tmp_path / "out"
    assert main(["wikisql", str(src), "--out", str(out), "--no-progress", *args]) == 0
    recs = {s: load_jsonl(out / f"{s}.jsonl") for s in ("train", "valid", "test")}
    return out, recs


# --------------------------------------------------------------------------- an independent
# emulation of the official WikiSQL engine (lib/dbengine.py): columns col0..colN, text cells
# stored lower-cased, condition values lower-cased, values on `real` columns read as numbers
# (thousands separators dropped, else the first number in the text, else left as text), one
# bound parameter per column. Written from the published behaviour, not from the converter.

_NUM = re.compile(r"[-+]?\d*\.\d+|\d+")
_AGG = ["", "MAX", "MIN", "COUNT", "SUM", "AVG"]


def official_database(tables):
    conn = sqlite3.connect(":memory:")
    for t in tables:
        name = "table_" + t["id"].replace("-", "_")
        conn.execute(f"CREATE TABLE {name} ({', '.join(f'col{i} {ty}' for i, ty in enumerate(t['types']))})")
        rows = [[c.lower() if isinstance(c, str) else c for c in row] for row in t["rows"]]
        if rows:
            conn.executemany(f"INSERT INTO {name} VALUES ({','.join('?' * len(t['types']))})", rows)
    return conn


def _as_number(text):
    try:
        v = float(text.replace(",", ""))
        if v == v and abs(v) != float("inf"):
            return v
    except ValueError:
        pass
    found = _NUM.findall(text)
    return float(found[0]) if found else None


def official_answer(conn, table, lf):
    select = f"col{lf['sel']}"
    if lf["agg"]:
        select = f"{_AGG[lf['agg']]}({select})"
    clauses, params = [], {}
    for col, op, val in lf["conds"]:
        if isinstance(val, str):
            val = val.lower()
            if table["types"][col] == "real":
                num = _as_number(val)
                val = val if num is None else num
        clauses.append(f"col{col} {['=', '>', '<'][op]} :col{col}")
        params[f"col{col}"] = val  # a second condition on the same column overwrites the first
    sql = f"SELECT {select} FROM table_{table['id'].replace('-', '_')}"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    return [r[0] for r in conn.execute(sql, params)]


def normalized(values):
    """Results compared as the official evaluator does: text case-insensitively."""
    out = []
    for v in values:
        if isinstance(v, str):
            out.append((1, v.lower()))
        elif v is None:
            out.append((0, ""))
        else:
            out.append((2, round(float(v), 6)))
    return sorted(out)


def compare_with_official(out_dir, tables_files):
    """(records checked, records whose gold differs from the official answer, details)."""
    tables = {}
    for tf in tables_files:
        for t in load_jsonl(tf):
            tables[t["id"]] = t
    official = official_database(tables.values())
    checked, differ, dbs = 0, [], {}
    for split in ("train", "valid", "test"):
        for rec in load_jsonl(out_dir / f"{split}.jsonl"):
            if rec["db_path"] not in dbs:
                dbs[rec["db_path"]] = sqlite3.connect(out_dir / rec["db_path"])
            ours = dbs[rec["db_path"]]
            lf = rec["meta"]["logical_form"]
            want = normalized(official_answer(official, tables[rec["meta"]["table_id"]], lf))
            got = normalized(v[0] for v in ours.execute(rec["sql"]))
            checked += 1
            if want != got:
                differ.append((rec["id"], rec["sql"], want, got))
    return checked, differ


# --------------------------------------------------------------------------- golden records

SYSTEM = ("You translate questions into SQLite queries. "
          "Answer with one SQL query over the given schema and nothing else.")
SCHEMA_B = (
    'CREATE TABLE "table_2_2000_3" (\n'
    '  "col0" REAL,\n  "Team" TEXT,\n  "Crowd" REAL,\n  "crowd (2)" TEXT,\n  "Score" TEXT\n);\n'
    '/* 3 example rows from "table_2_2000_3":\n'
    "col0 | Team | Crowd | crowd (2) | Score\n"
    "1.0 | Hawks | 24637.0 | big | 10-2\n"
    "2.0 | eagles | 11500.0 | small | 3-3\n"
    "3.0 | O'Neill XI | 28100.0 | big | 21\n*/"
)


def test_golden_records(tmp_path):
    out, recs = convert(tmp_path, "--keep-splits")
    assert [len(recs[s]) for s in ("train", "valid", "test")] == [0, 11, 2]
    by_id = {r["id"]: r for r in recs["valid"]}
    q = "Which team had a crowd larger than 20,000?"
    sql = 'SELECT "Team" FROM "table_2_2000_3" WHERE "Crowd" > 20000'
    assert by_id["dev-5"] == {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Schema:\n{SCHEMA_B}\n\nQuestion: {q}"},
            {"role": "assistant", "content": sql},
        ],
        "question": q,
        "schema": SCHEMA_B,
        "sql": sql,
        "source": "wikisql",
        "id": "dev-5",
        "db_path": "wikisql.sqlite",
        "table": "table_2_2000_3",
        "db_id": None,
        "meta": {"table_id": "2-2000-3", "split": "dev",
                 "logical_form": {"sel": 1, "agg": 0, "conds": [[2, 1, "20,000"]]},
                 "has_rows": True, "phase": 1, "gold_empty": False},
    }
    expected_sql = {
        "dev-1": """SELECT "Position" FROM "table_1_1000_1" WHERE "No." = '42'""",
        "dev-2": """SELECT COUNT("Player") FROM "table_1_1000_1" WHERE "Years" = '1996-97'""",
        "dev-3": """SELECT MAX("Height (cm)") FROM "table_1_1000_1" WHERE "Position" = 'guard'""",
        # NOCASE folds ASCII only: the value is written as the cell spells it
        "dev-4": """SELECT "No." FROM "table_1_1000_1" WHERE "Player" = 'Zoë Ørn'""",
        # a number on a text column: SQLite's affinity makes it the text '21'
        "dev-6": """SELECT SUM("Crowd") FROM "table_2_2000_3" WHERE "Score" = 21""",
        "dev-7": """SELECT "col0" FROM "table_2_2000_3" WHERE "Team" = 'o''neill xi'""",
        "dev-8": """SELECT "Team" FROM "table_2_2000_3" WHERE "Score" > '5'""",
        "dev-9": """SELECT "Team" FROM "table_2_2000_3" WHERE "crowd (2)" = 'small'""",
        "dev-10": """SELECT "Team" FROM "table_2_2000_3" WHERE "Crowd" = 'n/a'""",
        # the official engine reads '28,100 people' as 28 (first number of the text)
        "dev-11": """SELECT "Team" FROM "table_2_2000_3" WHERE "Crowd" = 28 AND "col0" > 1""",
    }
    for rid, want in expected_sql.items():
        assert by_id[rid]["sql"] == want, rid
    assert [r["sql"] for r in recs["test"]] == [
        """SELECT "Passengers" FROM "table_1_3000_2" WHERE "Airport" = 'ellis harbour'""",
        """SELECT "City" FROM "table_1_3000_2" WHERE "Passengers" > 20000000""",
    ]


def test_every_gold_query_runs_and_matches_the_official_engine(tmp_path):
    out, recs = convert(tmp_path, "--keep-splits")
    db = sqlite3.connect(out / "wikisql.sqlite")
    for split in recs.values():
        for rec in split:
            db.execute(rec["sql"]).fetchall()  # raises on any invalid query
    checked, differ = compare_with_official(out, [FIX / "dev.tables.jsonl", FIX / "test.tables.jsonl"])
    assert checked == 13 and differ == []
    empty = sorted(r["id"] for r in recs["valid"] if r["meta"]["gold_empty"])
    # '10-2', '3-3', '21' are all smaller than '5' as text, as in the official engine;
    # 'n/a' is no number; no crowd was 28.
    assert empty == ["dev-10", "dev-11", "dev-8"]


def test_where_we_differ_from_the_official_engine(tmp_path):
    """The one known difference: the official engine binds one parameter per column, so with
    two conditions on the same column both compare against the last value ("taller than 181
    and shorter than 200" becomes "> 200 AND < 200": nobody). Our SQL keeps both values and
    answers the question. No WikiSQL dev record has two conditions on one column."""
    src = tmp_path / "src"
    shutil.copytree(FIX, src)
    rec = {"phase": 1, "table_id": "1-1000-1", "question": "Who is taller than 181 and shorter than 200?",
           "sql": {"sel": 0, "agg": 0, "conds": [[4, 1, 181], [4, 2, 200]]}}
    with open(src / "dev.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")
    out, recs = convert(tmp_path, "--keep-splits", src=src)
    checked, differ = compare_with_official(out, [src / "dev.tables.jsonl", src / "test.tables.jsonl"])
    assert checked == 14
    assert differ == [("dev-12", """SELECT "Player" FROM "table_1_1000_1" WHERE "Height (cm)" > 181 """
                                 """AND "Height (cm)" < 200""",
                       [], [(1, "kyle lowry"), (1, "martin lewis")])]


def test_bundled_sample_matches_the_official_engine(tmp_path):
    out, recs = convert(tmp_path, "--keep-splits", src=SAMPLE)
    tables = sorted(SAMPLE.glob("*.tables.jsonl"))
    checked, differ = compare_with_official(out, tables)
    assert checked == sum(len(v) for v in recs.values()) >= 80 and differ == []
    assert all(not r["meta"]["gold_empty"] for v in recs.values() for r in v)


def test_text_columns_ignore_case_like_the_official_evaluator(tmp_path):
    out, _ = convert(tmp_path)
    db = sqlite3.connect(out / "wikisql.sqlite")
    # A model that copies the lower-cased value from the question still finds the row.
    assert db.execute("""SELECT "Player" FROM "table_1_1000_1" WHERE "Position" = 'forward-center'""").fetchall() == [("Art Long",)]
    assert db.execute("""SELECT count(*) FROM "table_1_1000_1" WHERE "Years" = '2012-PRESENT'""").fetchone() == (1,)
    # Numbers on real columns are numbers.
    assert db.execute("""SELECT typeof("Height (cm)") FROM "table_1_1000_1" LIMIT 1""").fetchone() == ("real",)


def test_text_comparison_on_numeric_looking_text_is_textual(tmp_path):
    """'>' / '<' on a text column compare text, as in the official engine: documented choice."""
    out, _ = convert(tmp_path)
    db = sqlite3.connect(out / "wikisql.sqlite")
    assert db.execute("""SELECT "Team" FROM "table_2_2000_3" WHERE "Score" > '5'""").fetchall() == []
    # the same with a bare number: SQLite applies the column's text affinity to it
    assert db.execute("""SELECT "Team" FROM "table_2_2000_3" WHERE "Score" > 5""").fetchall() == []


@pytest.mark.parametrize("src", [FIX, SAMPLE])
def test_schema_text_equals_the_one_read_from_the_database(tmp_path, src):
    """generate --db can rebuild exactly the prompt a model was trained on."""
    out, recs = convert(tmp_path, src=src)
    for rec in (r for v in recs.values() for r in v):
        tables = tables_from_database(out / rec["db_path"], 3, [rec["table"]])
        assert render_schema(tables, 3) == rec["schema"]


@pytest.mark.parametrize("value, col_type, stored", [
    (21, "real", 21.0), ("120", "real", 120.0), (" 1.5e3 ", "real", 1500.0), ("1,200", "real", "1,200"),
    ("n/a", "real", "n/a"), (3, "text", "3"), (3.0, "text", "3.0"), ("L5506", "text", "L5506"),
    (None, "text", None),
])
def test_stored_value_follows_sqlite_affinity(value, col_type, stored):
    assert stored_value(value, col_type) == stored
    con = sqlite3.connect(":memory:")
    con.execute(f"CREATE TABLE t (c {'REAL' if col_type == 'real' else 'TEXT'})")
    con.execute("INSERT INTO t VALUES (?)", (value,))
    assert con.execute("SELECT c FROM t").fetchone()[0] == stored


# --------------------------------------------------------------------------- names and values

@pytest.mark.parametrize("header, names", [
    (["Player", "No."], ["Player", "No."]),
    (["", "Team", ""], ["col0", "Team", "col2"]),
    (["Crowd", "crowd", "CROWD"], ["Crowd", "crowd (2)", "CROWD (3)"]),
    (["a", "a (2)", "a"], ["a", "a (2)", "a (3)"]),
    (["  ", "x\x00y"], ["col0", "xy"]),
])
def test_column_names_are_distinct_and_non_empty(header, names):
    assert column_names(header) == names


@pytest.mark.parametrize("table_id, name", [
    ("1-10015132-11", "table_1_10015132_11"),
    ("2-1.5 x", "table_2_1_5_x"),
])
def test_table_names(table_id, name):
    assert table_sql_name(table_id) == name


@pytest.mark.parametrize("text, number", [
    ("24,637", 24637.0), ("1,332,123", 1332123.0), ("7.5", 7.5), ("-3", -3.0),
    ("25 km", 25.0), ("28,100 people", 28.0), ("about 1.5 m", 1.5), ("n/a", None), ("", None),
])
def test_official_number_reading(text, number):
    assert official_number(text) == number


def _table(header=("A", "B"), types=("text", "real"), rows=(("x", 1.0),)):
    return parse_table({"id": "1-1-1", "header": list(header), "types": list(types),
                        "rows": [list(r) for r in rows]}, Where("t.jsonl", 1))


@pytest.mark.parametrize("lf, message", [
    ({"sel": 2, "agg": 0, "conds": []}, "select column index 2 is out of range"),
    ({"sel": 0, "agg": 6, "conds": []}, "unknown aggregation index 6"),
    ({"sel": 0, "agg": 0, "conds": [[0, 3, "x"]]}, "unknown condition operator index 3"),
    ({"sel": 0, "agg": 0, "conds": [[5, 0, "x"]]}, "condition column index 5 is out of range"),
    ({"sel": 0, "agg": 0, "conds": [[-1, 0, "x"]]}, "condition column index -1 is out of range"),
])
def test_bad_indices_are_input_errors(lf, message):
    with pytest.raises(InputError, match=message) as e:
        logical_form_to_sql(lf, _table(), Where("q.jsonl", 7))
    assert str(e.value).startswith("q.jsonl:7: ")


@pytest.mark.parametrize("raw, message", [
    ({"id": "t", "header": ["a"], "types": ["text", "real"], "rows": []}, "2 types for 1 header"),
    ({"id": "t", "header": ["a"], "types": ["int"], "rows": []}, "unknown column type 'int'"),
    ({"id": "t", "header": ["a"], "types": ["text"], "rows": [["x", "y"]]}, "row 0 must be a list of 1 cells"),
    ({"id": "t", "header": ["a"], "types": ["text"], "rows": [[["x"]]]}, "not text or a number"),
    ({"id": "t", "header": [], "types": [], "rows": []}, "has no columns"),
    ({"header": ["a"], "types": ["text"], "rows": []}, "missing field 'id'"),
])
def test_bad_tables_are_input_errors(raw, message):
    with pytest.raises(InputError, match=message):
        parse_table(raw, Where("t.tables.jsonl", 3))


# --------------------------------------------------------------------------- database reuse

def test_database_is_reused_when_current_and_rebuilt_when_tables_change(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIX, src)
    out, _ = convert(tmp_path, src=src)
    db = out / "wikisql.sqlite"
    first = db.stat().st_mtime_ns
    os.utime(db, ns=(first - 10**9, first - 10**9))
    stamp = db.stat().st_mtime_ns
    convert(tmp_path, src=src)
    assert db.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert "reused" in " ".join(json.loads((out / "convert_report.json").read_text())["notes"])
    # change one cell: the fingerprint no longer matches, the file is rebuilt
    lines = (src / "dev.tables.jsonl").read_text(encoding="utf-8").replace("Art Long", "Arthur Long")
    (src / "dev.tables.jsonl").write_text(lines, encoding="utf-8")
    convert(tmp_path, src=src)
    assert db.stat().st_mtime_ns != stamp
    con = sqlite3.connect(db)
    assert con.execute("""SELECT count(*) FROM "table_1_1000_1" WHERE "Player" = 'Arthur Long'""").fetchone() == (1,)


def test_db_name_flag_and_relative_db_path(tmp_path):
    out, recs = convert(tmp_path, "--db-name", "mine.sqlite")
    assert (out / "mine.sqlite").is_file() and not (out / "wikisql.sqlite").exists()
    assert {r["db_path"] for v in recs.values() for r in v} == {"mine.sqlite"}


def test_hugging_face_record_shape(tmp_path):
    """datasets' wikisql rows embed the table and hold conds as parallel lists."""
    from mlx_text2sql.sources import wikisql

    table = {"id": "1-5-5", "header": ["Name", "Votes"], "types": ["text", "real"],
             "rows": [["Ann", "120"], ["Bo", "95"]], "page_title": "", "caption": "", "name": "table_5_5"}
    records = [{"phase": 1, "question": "who got more than 100 votes?", "table": table,
                "sql": {"human_readable": "", "sel": 0, "agg": 0,
                        "conds": {"column_index": [1], "operator_index": [1], "condition": ["100"]}}}]
    problems = Problems()
    result = wikisql.read_hf({"validation": records}, SourceOptions(out_dir=str(tmp_path), progress=False), problems)
    ex = result.splits["validation"][0]
    assert ex.sql == """SELECT "Name" FROM "table_1_5_5" WHERE "Votes" > 100"""
    assert ex.id == "validation-0" and not problems.items
    result.staging.commit()
    con = sqlite3.connect(tmp_path / "wikisql.sqlite")
    assert con.execute(ex.sql).fetchall() == [("Ann",)]


# --------------------------------------------------------------------------- real data (optional)

@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "dev.jsonl").is_file(), reason="the shared WikiSQL dev split is not here")
def test_real_dev_split(tmp_path):
    """All 8,421 dev queries run; every answer equals the emulated official engine's."""
    out = tmp_path / "out"
    assert main(["wikisql", str(SHARED), "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "convert_report.json").read_text())
    assert report["gold"]["checked"] == 8421 and report["gold"]["errors"] == 0
    checked, differ = compare_with_official(out, [SHARED / "dev.tables.jsonl"])
    assert checked == 8421 and differ == []


def test_bundled_data_is_what_the_documented_command_writes(tmp_path):
    """data/{train,valid,test}.jsonl and data/sample.sqlite are regenerated by the command in
    data/README.md; if the converter or the prompt changes, regenerate them."""
    data = SAMPLE.parent.parent
    out = tmp_path / "data"
    assert main(["wikisql", str(SAMPLE), "--keep-splits", "--out", str(out), "--db-name", "sample.sqlite",
                 "--no-progress"]) == 0
    for split in ("train", "valid", "test"):
        assert (out / f"{split}.jsonl").read_bytes() == (data / f"{split}.jsonl").read_bytes(), split
    dump = lambda p: list(sqlite3.connect(p).iterdump())  # noqa: E731
    assert dump(out / "sample.sqlite") == dump(data / "sample.sqlite")
    assert "python -m mlx_text2sql.convert wikisql data/sample/wikisql --keep-splits --out data " \
           "--db-name sample.sqlite" in (data / "README.md").read_text()
