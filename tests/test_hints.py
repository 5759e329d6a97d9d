"""Value hints: which cells a question mentions, found in the database, the same at conversion
time (training records) and at ``generate --db`` time."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest

from mlx_text2sql import generate
from mlx_text2sql.convert import main as convert_main
from mlx_text2sql.hints import (Hint, ValueIndex, find_spans, hints_from_values, normalize,
                                render_hints, select_hints, sql_literal)
from mlx_text2sql.prompts import build_messages, record_messages

sys.path.insert(0, str(Path(__file__).parent))
from sqlitefiles import make_sqlite  # noqa: E402
from tinymodels import make_programmed_model  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "convert" / "wikisql"


@pytest.fixture()
def db(tmp_path):
    return make_sqlite(tmp_path / "teams.sqlite", ("team", '"Name" TEXT, "City" TEXT, "No." TEXT, "Founded" REAL, "Note" TEXT', [
        ("Milwaukee Bucks", "Milwaukee", "10", 1968.0, "a"),
        ("Springfield Giants", "Springfield, Ohio", "7", 1901.0, None),
        ("Ohio Stars", "Columbus", "10", 1950.5, "Ohio"),
    ]), ("arena", '"Team" TEXT, "Seats" INTEGER', [("Milwaukee Bucks", 17500), ("Ohio Stars", 900)]))


def test_literals_and_normalization():
    assert sql_literal(1968.0) == "1968" and sql_literal(1950.5) == "1950.5" and sql_literal(7) == "7"
    assert sql_literal("O'Neil") == "'O''Neil'" and sql_literal("10") == "'10'"
    assert normalize("  Springfield,\n  OHIO ") == "springfield, ohio"


def test_spans_respect_word_boundaries():
    q = normalize("Who wore number 10 in 2010 for the Bucks?")
    assert find_spans(q, "10") == [(q.index(" 10 ") + 1, q.index(" 10 ") + 3)]
    assert find_spans(q, "buck") == []
    # a value ending in punctuation still matches at the end of a word
    assert find_spans(normalize("team of st. louis"), "st.") == [(8, 11)]


def test_hints_name_the_column_and_drop_matches_inside_longer_ones(db):
    with ValueIndex(db) as index:
        hints = index.hints("Who was founded in Springfield, Ohio after 1900 with number 10?", ["team"])
        text = render_hints(hints)
    # "Ohio" (a Note cell) lies inside "Springfield, Ohio": dropped; "10" is in one column
    assert text == "\"City\" = 'Springfield, Ohio'; \"No.\" = '10'"
    assert [h.column for h in hints] == ["City", "No."]


def test_lone_letters_and_missing_values_give_no_hints(db):
    with ValueIndex(db) as index:
        # the cell "a" would match the article; nothing else in the question is a cell
        assert index.hints("What is a team from Denver?", ["team"]) == []
        assert index.hint_text("What is a team from Denver?", ["team"]) == ""


def test_numbers_are_written_as_the_column_stores_them(db):
    with ValueIndex(db) as index:
        assert index.hint_text("Which team was founded in 1968?", ["team"]) == '"Founded" = 1968'


def test_several_tables_are_qualified_and_unknown_tables_skipped(db):
    with ValueIndex(db) as index:
        text = index.hint_text("How many seats does the Milwaukee Bucks arena have?", ["team", "arena", "nope"])
    assert text == "\"arena\".\"Team\" = 'Milwaukee Bucks'; \"team\".\"Name\" = 'Milwaukee Bucks'"


def test_small_numbers_are_not_matched_in_key_columns(tmp_path):
    path = tmp_path / "cars.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE maker (MakerId INTEGER PRIMARY KEY, Name TEXT)")
    con.execute("CREATE TABLE car (id INTEGER, Maker INTEGER REFERENCES maker(MakerId), "
                "Cylinders INTEGER, Serial INTEGER, GeoID INTEGER)")
    con.executemany("INSERT INTO maker VALUES (?, ?)", [(8, "ford"), (4, "fiat")])
    con.executemany("INSERT INTO car VALUES (?, ?, ?, ?, ?)",
                    [(8, 8, 8, 8, 3807116660), (1, 4, 4, 12, 1)])
    con.commit()
    con.close()
    with ValueIndex(path) as index:
        text = index.hint_text("Which ford cars have 8 cylinders?", ["maker", "car"])
        assert text == "\"maker\".\"Name\" = 'ford'; \"car\".\"Cylinders\" = 8; \"car\".\"Serial\" = 8"
        assert index.hint_text("the car of geo id 3807116660", ["car"]) == '"GeoID" = 3807116660'


def test_max_hints_keeps_the_first_in_question_order():
    cols = [("t", "A", ["x1", "x2", "x3"]), ("t", "B", ["x4"])]
    hints = hints_from_values("x4 x3 x2 x1", cols, max_hints=2)
    assert [h.value for h in hints] == ["x4", "x3"]
    dup = [Hint("t", "A", "v", 0, 1), Hint("t", "A", "V", 0, 1)]
    assert len(select_hints(dup)) == 1


def test_cells_differing_only_in_case_are_chosen_the_same_way_under_every_hash_seed():
    """The choice between 'Rain' and 'rain' must not follow set order (PYTHONHASHSEED)."""
    import subprocess

    code = ("from mlx_text2sql.hints import Hint, select_hints; "
            "c = [Hint('events', 'kind', v, 4, 8) for v in ('Rain', 'rain', 'RAIN', 'rAin')]; "
            "print([h.value for h in select_hints(c)])")
    seen = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**__import__("os").environ, "PYTHONHASHSEED": str(seed)}).stdout
            for seed in range(6)}
    assert seen == {"['RAIN']\n"}


def test_a_broken_database_gives_no_hints(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database at all" * 10)
    index = ValueIndex(bad)
    assert index.hints("anything 10", ["t"]) == []


def test_the_hint_line_follows_the_question():
    msgs = build_messages("q?", "CREATE TABLE t (a TEXT)", "SELECT 1", hints="\"a\" = 'x'")
    assert msgs[1]["content"].endswith("Question: q?\nValues: \"a\" = 'x'")
    assert "Values:" not in build_messages("q?", "CREATE TABLE t (a TEXT)", hints="")[1]["content"]
    rec = {"question": "q?", "schema": "CREATE TABLE t (a TEXT)", "hints": "\"a\" = 'x'"}
    assert record_messages(rec)[-1]["content"] == msgs[1]["content"]


def test_convert_value_hints(tmp_path):
    out = tmp_path / "out"
    assert convert_main(["wikisql", str(FIX), "--out", str(out), "--no-progress", "--value-hints"]) == 0
    recs = [json.loads(line) for s in ("train", "valid", "test")
            for line in open(out / f"{s}.jsonl", encoding="utf-8")]
    assert recs and all("hints" in r for r in recs)
    con = sqlite3.connect(out / "wikisql.sqlite")
    checked = 0
    for r in recs:
        content = r["messages"][1]["content"]
        if r["hints"]:
            assert content.endswith(f"Question: {r['question']}\nValues: {r['hints']}")
            # every hint is a real cell of the record's table that the question names
            for part in r["hints"].split("; "):
                col, value = part.split(" = ", 1)
                n = con.execute(f'SELECT COUNT(*) FROM "{r["table"]}" WHERE {col} = {value}').fetchone()[0]
                assert n > 0, (r["id"], part)
                checked += 1
        else:
            assert "\nValues:" not in content
    con.close()
    assert checked > 0
    report = json.loads((out / "convert_report.json").read_text())
    assert report["settings"]["value_hints"] is True
    # without the flag: no hints field and no line
    out2 = tmp_path / "plain"
    assert convert_main(["wikisql", str(FIX), "--out", str(out2), "--no-progress"]) == 0
    plain = [json.loads(line) for line in open(out2 / "train.jsonl", encoding="utf-8")]
    assert all("hints" not in r and "\nValues:" not in r["messages"][1]["content"] for r in plain)


def test_convert_rejects_a_bad_max_hints(tmp_path, capsys):
    code = convert_main(["wikisql", str(FIX), "--out", str(tmp_path / "o"), "--value-hints", "--max-hints", "0"])
    assert code == 2 and "--max-hints" in capsys.readouterr().err


def test_generate_db_adds_hints_when_the_adapter_was_trained_with_them(tmp_path, db, capsys):
    from mlx_text2sql.models import load_model
    from mlx_text2sql.tuner.lora import apply_lora, save_adapter

    model = make_programmed_model(tmp_path / "m", "SELECT 1", "chatml")
    lm = load_model(str(model))
    apply_lora(lm.model, rank=2, alpha=4.0, targets=["q_proj"])
    adapter = tmp_path / "ad"
    save_adapter(lm.model, adapter, {"base_model": str(model),
                                      "prompt": {"sample_rows": 0, "value_hints": True, "max_hints": 4}})
    q = "Which team plays in Milwaukee?"
    argv = ["--adapter-path", str(adapter), "--db", str(db), "--tables", "team", "-q", q, "--show-prompt"]
    assert generate.main(argv) == 0
    err = capsys.readouterr().err
    assert f"Question: {q}\nValues: \"City\" = 'Milwaukee'" in err
    assert generate.main(argv + ["--no-value-hints"]) == 0
    assert "Values:" not in capsys.readouterr().err
