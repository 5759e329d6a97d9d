"""``evaluate --replies``: the replies an earlier run saved are scored again without a model,
with the repair options of the new run; a file that lacks a record's reply is named."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mlx_text2sql import evaluate

sys.path.insert(0, str(Path(__file__).parent))
from evalkit import one_record, scripted_replies  # noqa: E402
from sqlitefiles import make_sqlite  # noqa: E402

QUESTION = "What are the names of the singers from the Netherlands?"
REPLY = "SELECT singer_name FROM singer WHERE country = 'Netherlands'"


@pytest.fixture()
def saved(tmp_path, tiny_llama, monkeypatch, capsys):
    """(data, the --output file of a model run whose reply names an unknown column)."""
    db = make_sqlite(tmp_path / "music.sqlite",
                     ("singer", '"Singer_ID" INTEGER, "Name" TEXT, "Country" TEXT',
                      [(1, "Joe Sharp", "Netherlands"), (2, "Timbaland", "United States")]))
    schema = 'CREATE TABLE "singer" ("Singer_ID" INTEGER, "Name" TEXT, "Country" TEXT);'
    data = one_record(tmp_path, QUESTION, schema, "SELECT Name FROM singer WHERE Country = 'Netherlands'",
                      source="spider", id="s0", db_path=db.name, db_id="music")
    scripted_replies(monkeypatch, REPLY)
    out = tmp_path / "run.jsonl"
    assert evaluate.main(["--data", str(data), "--model", str(tiny_llama), "--quiet", "--output", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith("execution_accuracy: 0.000")
    return data, out


def no_model(monkeypatch):
    from mlx_text2sql.api import Text2SQL

    def refuse(*a, **k):
        raise AssertionError("--replies must not load a model")

    monkeypatch.setattr(Text2SQL, "load", refuse)


def test_saved_replies_are_scored_again_with_repair(saved, tmp_path, monkeypatch, capsys):
    data, run = saved
    no_model(monkeypatch)
    again = tmp_path / "again.jsonl"
    argv = ["--data", str(data), "--replies", str(run), "--quiet"]
    assert evaluate.main(argv) == 0
    assert capsys.readouterr().out.strip().endswith("execution_accuracy: 0.000")  # the same score
    assert evaluate.main(argv + ["--fix-names", "--output", str(again)]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("execution_accuracy: 1.000")
    assert "execution accuracy without it 0.0%" in out
    row = json.loads(again.read_text())
    assert row["reply"] == REPLY and row["pred_sql_raw"] == REPLY and row["match"] is True
    assert row["name_fixes"] == [["column", "singer_name", "Name"]] and row["model"] == "model"


def test_a_record_without_a_saved_reply_is_named(saved, tmp_path, monkeypatch, capsys):
    data, run = saved
    no_model(monkeypatch)
    (tmp_path / "other").mkdir()
    other = one_record(tmp_path / "other", "How many singers?", "CREATE TABLE singer (Name TEXT);",
                       "SELECT count(*) FROM singer", id="s9")
    assert evaluate.main(["--data", str(other), "--replies", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "has no model reply for record 's9' (1 of 1 records have none)" in err and str(run) in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"id": "s0"}\n')
    assert evaluate.main(["--data", str(data), "--replies", str(empty), "--quiet"]) == 2
    assert "holds no results with a model reply" in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--vote", "3"], "--vote needs a model run"),
    (["--compare-base"], "--compare-base needs a model run"),
    (["--gold"], "give --gold or --replies, not both"),
    (["--constrain-names"], "--constrain-names needs a model run"),
])
def test_replies_refuse_what_needs_a_model(saved, extra, message, capsys):
    data, run = saved
    assert evaluate.main(["--data", str(data), "--replies", str(run), *extra]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_replies_file_is_named(saved, tmp_path, capsys):
    data, _ = saved
    assert evaluate.main(["--data", str(data), "--replies", str(tmp_path / "nope.jsonl")]) == 2
    assert f"--replies {tmp_path / 'nope.jsonl'}: file not found" in capsys.readouterr().err
