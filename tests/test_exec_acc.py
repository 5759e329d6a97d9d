"""``--best-metric exec_acc``: validation execution accuracy picks adapters/best. Scoring is
evaluate's own (a query that returns the gold rows counts), the sample is fixed and seeded,
and a real (tiny) training run reports it at every evaluation but step 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sqlitefiles import spider_folder

from mlx_text2sql.convert import main as convert_main
from mlx_text2sql.tuner import exec_acc

FIX = Path(__file__).parent / "fixtures" / "spider_school"


@pytest.fixture(scope="module")
def school_data(tmp_path_factory):
    """The school fixture converted (train: its train questions, valid: its dev questions)."""
    root = tmp_path_factory.mktemp("school")
    src = root / "spider"
    spider_folder(FIX, src, "school")
    out = root / "data"
    assert convert_main(["spider", str(src), "--out", str(out), "--no-progress", "--keep-splits",
                         "--split-map", "dev=valid", "--select-tables", "--value-hints"]) == 0
    return out


def _records(folder: Path, split: str) -> list[dict]:
    return [json.loads(l) for l in open(folder / f"{split}.jsonl")]


def test_sample_is_fixed_and_only_executable():
    recs = [{"id": i, "sql": "SELECT 1", "db_path": "x.sqlite" if i % 3 else None} for i in range(30)]
    a = exec_acc._sample(recs, 5, seed=0)
    assert a == exec_acc._sample(recs, 5, seed=0) and len(a) == 5
    assert all(r["db_path"] for r in a)
    assert exec_acc._sample(recs, 5, seed=1) != a
    assert len(exec_acc._sample(recs, 100, seed=0)) == 20


def test_scores_with_evaluates_rules(school_data, monkeypatch):
    """Half the replies are the gold query, half a wrong one: exactly half count."""
    from mlx_text2sql import engine

    records = _records(school_data, "valid")
    assert len(records) == 5

    class Gen:
        def __init__(self, loaded, **kw):
            assert kw.get("prefix_cache_mb") == 0  # weights change between evaluations

        def generate(self, prompts, **kw):
            assert kw["temp"] == 0.0
            out = []
            for i, p in enumerate(prompts):
                sql = records[i]["sql"] if i % 2 == 0 else "SELECT name FROM student"
                out.append(engine.Result(text=sql, sql=sql, n_prompt_tokens=1, n_tokens=1, seconds=0.0))
            return out

    monkeypatch.setattr(engine, "SQLGenerator", Gen)

    class Loaded:
        model = object()

    metric = exec_acc.ExecAccuracy(Loaded, records, school_data)
    assert metric(Loaded.model) == pytest.approx(3 / 5)
    assert [s["match"] for s in metric.last] == [True, False, True, False, True]
    with pytest.raises(ValueError):
        metric(object())


def test_training_reports_exec_acc_and_picks_best(school_data, tiny_llama, tmp_path):
    from mlx_text2sql.train import main as train_main

    out = tmp_path / "ad"
    assert train_main(["--model", str(tiny_llama), "--data", str(school_data), "--iters", "4",
                       "--batch-size", "2", "--eval-every", "2", "--save-every", "2",
                       "--best-metric", "exec_acc", "--exec-acc-samples", "3",
                       "--exec-acc-max-tokens", "16", "-o", str(out), "--quiet", "--no-plot"]) == 0
    log = [json.loads(l) for l in open(out / "log.jsonl")]
    evals = [e for e in log if e.get("type") == "eval"]
    assert [e["step"] for e in evals] == [0, 2, 4]
    assert "exec_acc" not in evals[0] and "val_loss" in evals[0]  # step 0: no generation
    assert all(0.0 <= e["exec_acc"] <= 1.0 for e in evals[1:])
    best = json.loads((out / "best" / "adapter_config.json").read_text())["best"]
    assert best["metric"] == "exec_acc" and best["step"] in (2, 4)
