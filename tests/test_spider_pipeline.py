"""Multi-table pipeline on the school fixture: convert with schema selection -> train a few
steps (tiny model) -> the API asks a database with exactly the prompt the converted test record
holds -> evaluate with voting, blind to the gold SQL."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sqlitefiles import spider_folder

from mlx_text2sql.convert import main as convert_main

FIX = Path(__file__).parent / "fixtures" / "spider_school"


@pytest.fixture(scope="module")
def school(tmp_path_factory, tiny_llama):
    """(data folder, database, adapter folder)."""
    from mlx_text2sql.train import main as train_main

    root = tmp_path_factory.mktemp("school")
    src = root / "spider"
    db = spider_folder(FIX, src, "school")
    data = root / "data"
    assert convert_main(["spider", str(src), "--out", str(data), "--no-progress", "--keep-splits",
                         "--split-map", "dev=test", "--valid-fraction", "0", "--select-tables",
                         "--value-hints"]) == 0
    adapter = root / "adapter"
    assert train_main(["--model", str(tiny_llama), "--data", str(data), "--iters", "2", "--batch-size", "2",
                       "-o", str(adapter), "--quiet", "--no-plot"]) == 0
    return data, db, adapter


def _records(path: Path) -> list[dict]:
    return [json.loads(l) for l in open(path)]


def test_adapter_records_the_selection(school):
    _, _, adapter = school
    prompt = json.loads((adapter / "adapter_config.json").read_text())["prompt"]
    assert prompt["convert"]["select_tables"] is True and prompt["value_hints"] is True


def test_api_asks_a_database_with_the_converted_prompt(school):
    """generate --db / the API pick the same tables and render the same prompt as the
    converted evaluation record of the same question."""
    from mlx_text2sql.api import Text2SQL

    data, db, adapter = school
    t2s = Text2SQL.load(adapter_path=str(adapter))
    for rec in _records(data / "test.jsonl"):
        shown = t2s.messages(rec["question"], db=str(db))
        assert shown == rec["messages"][:-1], rec["question"]


def _evaluate(data: Path, adapter: Path, out: Path, *extra: str) -> list[dict]:
    from mlx_text2sql.evaluate import main as evaluate_main

    assert evaluate_main(["--adapter-path", str(adapter), "--data", str(data / "test.jsonl"),
                          "--output", str(out), "--max-tokens", "24", "--quiet", *extra]) == 0
    return _records(out)


def test_evaluate_votes_and_never_looks_at_the_gold(school, tmp_path, capsys):
    data, _, adapter = school
    a = _evaluate(data, adapter, tmp_path / "a.jsonl", "--vote", "3")
    report = capsys.readouterr().out
    assert "voting: 5 questions voted on" in report and "execution_accuracy:" in report
    assert all(r["guided"]["samples"] == 3 and r["guided"].get("mode") == "vote" for r in a)
    # the same records with other gold queries (and so other gold results)
    changed = tmp_path / "changed"
    changed.mkdir()
    for name in ("test.jsonl", "convert_report.json"):
        shutil.copy(data / name, changed / name)
    recs = _records(data / "test.jsonl")
    with open(changed / "test.jsonl", "w") as f:
        for r in recs:
            r["sql"] = "SELECT club_name FROM club"
            r["db_path"] = str((data / r["db_path"]).resolve()) if r.get("db_path") else None
            f.write(json.dumps(r) + "\n")
    b = _evaluate(changed, adapter, tmp_path / "b.jsonl", "--vote", "3")
    for ra, rb in zip(a, b):
        for key in ("pred_sql", "pred_sql_greedy", "raw", "guided"):
            assert ra.get(key) == rb.get(key), key
        assert ra["gold_sql"] != rb["gold_sql"]
