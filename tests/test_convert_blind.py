"""Evaluation records must not be built from their answer: changing the gold SQL of valid and
test records changes nothing in their prompts (schema selection, trimming to --max-tokens,
value hints), while training records may show the tables their gold query uses."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from mlx_text2sql.convert import main

FIX = Path(__file__).parent / "fixtures" / "spider_school"


def _spider(root: Path, dev_sql: str | None = None, train_sql: str | None = None) -> Path:
    root.mkdir(parents=True)
    shutil.copy(FIX / "tables.json", root / "tables.json")
    for name, new in (("dev.json", dev_sql), ("train_spider.json", train_sql)):
        recs = json.loads((FIX / name).read_text())
        if new is not None:
            for r in recs:
                r["query"] = new
        (root / name).write_text(json.dumps(recs))
    db = root / "database" / "school" / "school.sqlite"
    db.parent.mkdir(parents=True)
    con = sqlite3.connect(db)
    con.executescript((FIX / "school.sql").read_text())
    con.close()
    return root


def _convert(src: Path, out: Path, *extra: str) -> dict[str, list[dict]]:
    assert main(["spider", str(src), "--out", str(out), "--no-progress", "--keep-splits",
                 "--split-map", "dev=test", "--valid-fraction", "0", "--value-hints",
                 "--select-tables", "--no-check-gold", *extra]) == 0
    return {s: [json.loads(l) for l in open(out / f"{s}.jsonl")] for s in ("train", "test")}


def _prompt(rec: dict) -> list[dict]:
    return [m for m in rec["messages"] if m["role"] != "assistant"]


@pytest.mark.parametrize("extra", [(), ("--max-tokens", "330")])
def test_test_prompts_do_not_depend_on_the_gold(tmp_path, extra):
    a = _convert(_spider(tmp_path / "a"), tmp_path / "out-a", *extra)
    # every dev question now "answers" with a query over the unrelated club tables
    b = _convert(_spider(tmp_path / "b", dev_sql="SELECT club_name FROM club JOIN club_member "
                         "ON club.club_id = club_member.club_id"), tmp_path / "out-b", *extra)
    assert len(a["test"]) == len(b["test"]) == 5
    for ra, rb in zip(a["test"], b["test"]):
        assert _prompt(ra) == _prompt(rb)
        assert ra["schema"] == rb["schema"] and ra.get("hints") == rb.get("hints")
        assert ra["sql"] != rb["sql"]
    if extra:  # the budget really trims some schemas, and still without the gold
        assert any(r["meta"].get("trimmed") for r in a["test"])


def test_training_prompts_show_the_gold_tables(tmp_path):
    a = _convert(_spider(tmp_path / "a"), tmp_path / "out-a")
    b = _convert(_spider(tmp_path / "b", train_sql="SELECT club_name FROM club"), tmp_path / "out-b")
    for ra, rb in zip(sorted(a["train"], key=lambda r: r["id"]), sorted(b["train"], key=lambda r: r["id"])):
        assert '"club"' in rb["schema"]
    assert any('"club"' not in r["schema"] for r in a["train"])
