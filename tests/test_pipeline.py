"""The whole pipeline on the bundled sample with a tiny model: convert -> train (a few steps)
-> fuse -> generate -> evaluate, asserting the files and figures each stage writes."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_convert_train_fuse_generate_evaluate(tmp_path, tiny_llama, capsys):
    from mlx_text2sql.convert import main as convert
    from mlx_text2sql.evaluate import main as evaluate
    from mlx_text2sql.fuse import main as fuse
    from mlx_text2sql.generate import main as generate
    from mlx_text2sql.train import main as train

    data = tmp_path / "data"
    assert convert(["wikisql", str(ROOT / "data" / "sample" / "wikisql"), "--keep-splits", "--out", str(data),
                    "--db-name", "sample.sqlite", "--no-progress"]) == 0
    report = json.loads((data / "convert_report.json").read_text())
    counts = report["splits"]
    assert counts["train"] > 0 and counts["valid"] > 0 and counts["test"] > 0
    assert report["gold"]["errors"] == 0 and (data / "sample.sqlite").is_file()
    for split in ("train", "valid", "test"):
        assert sum(1 for _ in open(data / f"{split}.jsonl")) == counts[split]

    adapter = tmp_path / "adapter"
    assert train(["--model", str(tiny_llama), "--data", str(data), "--iters", "4", "--batch-size", "2",
                  "--eval-every", "2", "--save-every", "2", "-o", str(adapter), "--quiet"]) == 0
    for name in ("adapters.npz", "adapter_config.json", "train_config.yaml", "log.jsonl", "loss.png"):
        assert (adapter / name).is_file(), name
    assert (adapter / "best" / "adapters.npz").is_file()
    assert sorted(p.name for p in (adapter / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    log = [json.loads(l) for l in open(adapter / "log.jsonl")]
    assert [e["step"] for e in log if e.get("type") == "eval"] == [0, 2, 4]
    assert all(e["val_loss"] > 0 for e in log if e.get("type") == "eval")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model"] == str(tiny_llama) and config["prompt"]["sample_rows"] == 3

    fused = tmp_path / "fused"
    assert fuse(["--adapter-path", str(adapter), "--save-path", str(fused)]) == 0
    assert (fused / "config.json").is_file() and any(fused.glob("*.safetensors"))

    capsys.readouterr()
    assert generate(["--model", str(fused), "--db", str(data / "sample.sqlite"), "--question",
                     "Who plays for Serbia?", "--max-tokens", "8"]) in (0, 1)
    capsys.readouterr()

    out = tmp_path / "preds.jsonl"
    assert evaluate(["--model", str(fused), "--data", str(data / "test.jsonl"), "--max-tokens", "8",
                     "--output", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.strip().splitlines()[-1].startswith("execution_accuracy: ")
    rows = [json.loads(l) for l in open(out)]
    assert len(rows) == counts["test"] and all("match" in r and "pred_sql" in r for r in rows)
    accuracy = float(printed.strip().splitlines()[-1].split(":")[1])
    assert accuracy == sum(1 for r in rows if r["match"]) / sum(1 for r in rows if r["match"] is not None)
