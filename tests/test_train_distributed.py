"""Data parallel training: two local processes (mlx.launch, ring backend on loopback) each take
half of every batch; their summed gradients must reproduce a single process on the whole batch."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from trainkit import write_dataset

REPO = Path(__file__).resolve().parent.parent


def free_port_pair() -> int:
    """A port p with p and p+1 free (the ring backend listens on one port per rank)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    pytest.skip("no free port pair")


@pytest.mark.slow  # ~30 s: three interpreter starts on a 2-core machine
@pytest.mark.distributed
def test_two_processes_match_one_process_on_the_combined_batch(tiny_llama, tmp_path):
    launcher = shutil.which("mlx.launch")
    if launcher is None:
        pytest.skip("mlx.launch not installed")
    data = write_dataset(tmp_path / "data", n_train=16, n_valid=8)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def args(out):
        return ["-m", "mlx_text2sql.train", "--model", str(tiny_llama), "--data", str(data), "--iters", "4",
                "--batch-size", "4", "--report-every", "1", "--eval-every", "2", "--val-batches", "-1",
                "--save-every", "100", "--lr", "1e-2", "--warmup", "1", "-o", str(out), "--quiet"]

    single = subprocess.run([sys.executable, *args(tmp_path / "one")], env=env, capture_output=True,
                            text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    two = subprocess.run([launcher, "--backend", "ring", "-n", "2", "--starting-port", str(free_port_pair()),
                          "--", sys.executable, *args(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr

    def log(out):
        return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]

    a, b = log(tmp_path / "one"), log(tmp_path / "two")
    assert [(r["type"], r["step"]) for r in a] == [(r["type"], r["step"]) for r in b]
    for ra, rb in zip(a, b):
        key = "loss" if ra["type"] == "train" else "val_loss"
        assert rb[key] == pytest.approx(ra[key], rel=2e-4, abs=1e-5), (ra, rb)
        if ra["type"] == "train":
            assert rb["trained_tokens"] == ra["trained_tokens"]  # both ranks' tokens are counted
    # only rank 0 wrote: one set of files
    assert (tmp_path / "two" / "adapters.npz").is_file()
