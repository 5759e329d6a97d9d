"""Training throughput: our trainer against ``mlx_lm lora`` and PyTorch + PEFT, same model, data and settings.

    python benchmarks/train_throughput.py [--data data] [--iters 12] [--batch-size 4]
    python benchmarks/train_throughput.py --data data/wikisql --batch-size 8 --iters 24 --report-every 6 \
        --peft-python /tmp/peers-venv/bin/python          # + the PyTorch/PEFT peer (setup_peers.sh)

The model (default: the built-in SmolLM2-135M-Instruct, dequantized to dense float32, which is
how both trainers run fastest on a CPU) is written once as a Hugging Face style folder; both
trainers load that folder, train LoRA (rank, alpha/scale, all blocks unless --lora-layers) on
the same train.jsonl with the same batch size, learning rate and maximum length. Each runs in
its own process with OpenBLAS (ours loads it itself; mlx_lm gets it through LD_PRELOAD), one
after the other.

Printed per trainer: effective tokens/s (real tokens of the training examples per second of
training, padding excluded, the first report window left out as compile warm-up), tokens per
CPU-second of the training process (a steadier figure on a machine shared with other work, but
blind to how well each uses the cores), seconds per step and peak memory (MLX's
``get_peak_memory``). Ours runs with its default loss on the SQL answer; ``--train-on-prompt``
adds a run of ours with the loss on every token, as mlx_lm computes it, for comparison.

Ours runs twice: as configured by default (questions on one schema in a batch share one run of
their prompt prefix) and with ``--no-share-prefix`` (every prompt run whole), so the lever shows.
Effective tokens count every example whole, as if it ran alone, for every trainer: a shared
prefix computed once counts for each question that uses it, padding counts for none.
``--grad-checkpoint`` turns on gradient checkpointing in ours and in mlx_lm (PEFT runs without):
slower steps, flat memory on long prompts.
``--peft-python`` runs benchmarks/peers/peft_train.py (PyTorch + PEFT, an HF-Trainer-style loop
on the same tokenized examples, same batch size, rank, alpha and learning rate) with that
interpreter (a venv with torch and peft; ``bash benchmarks/setup_peers.sh`` makes one).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Runs mlx_lm's own trainer (mlx_lm.lora.train_model) and prints each loss report as JSON. It
# rebuilds what `mlx_lm lora` does in run(), because run() replaces the callback it is given.
MLX_LM_DRIVER = r"""
import json, sys, time, types, resource
import numpy as np
import mlx.core as mx
from mlx_lm import lora as L
from mlx_lm.tuner.callbacks import TrainingCallback
from mlx_lm.utils import load

class Report(TrainingCallback):
    def __init__(self):
        self.cpu = time.process_time()
    def on_train_loss_report(self, info):
        now = time.process_time()
        info = dict(info, cpu_seconds=now - self.cpu)
        self.cpu = now
        print("REPORT " + json.dumps(info), flush=True)
    def on_val_loss_report(self, info):
        self.cpu = time.process_time()

args = L.build_parser().parse_args(sys.argv[1:])
args = vars(args)
for k, v in L.CONFIG_DEFAULTS.items():
    if args.get(k) is None:
        args[k] = v
args = types.SimpleNamespace(**args)
np.random.seed(args.seed)
model, tokenizer = load(args.model)
train_set, valid_set, _ = L.load_dataset(args, tokenizer)
L.train_model(args, model, train_set, valid_set, training_callback=Report())
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="model spec (default smollm2-135m)")
    p.add_argument("--data", default=str(ROOT / "data"), help="folder with train.jsonl and valid.jsonl")
    p.add_argument("--iters", type=int, default=12, help="optimizer steps per trainer (default 12)")
    p.add_argument("--report-every", type=int, default=3, help="steps per report window (default 3)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--lora-layers", type=int, default=None, help="last N blocks (default: all)")
    p.add_argument("--grad-checkpoint", action="store_true",
                   help="gradient checkpointing in every trainer that has it (ours and mlx_lm)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--max-seq-length", type=int, default=1024)
    p.add_argument("--train-on-prompt", action="store_true",
                   help="also time ours with the loss on every token")
    p.add_argument("--skip-mlx-lm", action="store_true")
    p.add_argument("--skip-plain", action="store_true", help="skip our run without shared-prefix packing")
    p.add_argument("--peft-python", default=None, metavar="PYTHON",
                   help="interpreter with torch + peft: also run the PyTorch + PEFT peer")
    p.add_argument("--peft-threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--workdir", default=None, help="keep the model folder and outputs here")
    return p.parse_args(argv)


def model_folder(spec: str, where: Path) -> Path:
    """The model as a dense float32 Hugging Face folder both trainers can load."""
    folder = where / "model"
    if (folder / "config.json").is_file():
        return folder
    from mlx_text2sql.models.load import load_model
    from mlx_text2sql.models.save import save_model_folder

    lm = load_model(spec, dtype="float32", dequantize=True)
    save_model_folder(lm.model, lm.tokenizer, lm.config, folder)
    return folder


def run(cmd: list[str], env: dict) -> tuple[str, float, float]:
    """Run a command; returns (stdout + stderr, wall seconds, child CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    tic = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - tic
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{out[-4000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out, wall, cpu


def ours(args, folder: Path, out: Path, train_on_prompt: bool, share_prefix: bool = True) -> dict:
    cmd = [sys.executable, "-m", "mlx_text2sql.train", "--model", str(folder), "--data", args.data,
           "--iters", str(args.iters), "--batch-size", str(args.batch_size), "--rank", str(args.rank),
           "--alpha", str(args.alpha), "--lr", str(args.lr), "--max-seq-length", str(args.max_seq_length),
           "--report-every", str(args.report_every), "--eval-every", "1000000", "--save-every", "1000000",
           "--warmup", "0", "--lr-schedule", "constant", "--optimizer", "adam", "--max-grad-norm", "0",
           "--val-batches", "1",
           "--no-plot", "--quiet", "-o", str(out)]
    if args.lora_layers:
        cmd += ["--lora-layers", str(args.lora_layers)]
    if args.grad_checkpoint:
        cmd.append("--grad-checkpoint")
    if train_on_prompt:
        cmd.append("--train-on-prompt")
    if not share_prefix:
        cmd.append("--no-share-prefix")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    _, wall, cpu = run(cmd, env)
    reports = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    reports = [r for r in reports if r["type"] == "train"]
    # Windows after the first (compile warm-up): differences of the cumulative counters.
    secs = [b["seconds"] - a["seconds"] for a, b in zip(reports, reports[1:])]
    toks = [b["trained_tokens"] - a["trained_tokens"] for a, b in zip(reports, reports[1:])]
    step_cpu = [r["cpu_seconds_per_step"] * args.report_every for r in reports[1:]]
    computed = [r.get("computed_tokens_per_second", 0) * (b["seconds"] - a["seconds"])
                for a, b, r in zip(reports, reports[1:], reports[1:])]
    label = "loss on every token" if train_on_prompt else ("SQL loss, shared prefix" if share_prefix
                                                           else "SQL loss, no packing")
    return {
        "name": f"mlx-text2sql ({label})",
        "computed_tokens_per_second": sum(computed) / sum(secs),
        "tokens_per_second": sum(toks) / sum(secs),
        "tokens_per_cpu_second": sum(toks) / sum(step_cpu),
        "seconds_per_step": sum(secs) / (args.report_every * len(secs)),
        "window_tokens_per_second": [t / s for t, s in zip(toks, secs)],
        "peak_memory_gb": max(r["peak_memory_gb"] for r in reports),
        "process_wall_s": wall, "process_cpu_s": cpu,
    }


def mlx_lm(args, folder: Path, out: Path) -> dict:
    from mlx_text2sql.blas import find_openblas

    cfg = out / "lora.yaml"
    out.mkdir(parents=True, exist_ok=True)
    cfg.write_text(json.dumps({"lora_parameters": {"rank": args.rank, "scale": args.alpha / args.rank,
                                                   "dropout": 0.0}}))
    cmd = [sys.executable, "-c", MLX_LM_DRIVER, "--model", str(folder), "--train", "--data", args.data,
           "--iters", str(args.iters), "--batch-size", str(args.batch_size),
           "--num-layers", str(args.lora_layers or -1), "--learning-rate", str(args.lr),
           "--max-seq-length", str(args.max_seq_length), "--steps-per-report", str(args.report_every),
           "--steps-per-eval", "1000000", "--val-batches", "1", "--save-every", "1000000",
           "--adapter-path", str(out / "adapters"), "-c", str(cfg)]
    if args.grad_checkpoint:
        cmd.append("--grad-checkpoint")
    env = dict(os.environ)
    lib = find_openblas()
    if lib:
        env["LD_PRELOAD"] = ":".join(x for x in (lib, env.get("LD_PRELOAD", "")) if x)
        env.setdefault("OPENBLAS_NUM_THREADS", str(os.cpu_count() or 1))
    text, wall, cpu = run(cmd, env)
    reports = [json.loads(line[len("REPORT "):]) for line in text.splitlines() if line.startswith("REPORT ")]
    if not reports:
        raise SystemExit(f"mlx_lm printed no loss reports:\n{text[-3000:]}")
    steady = reports[1:] or reports
    # mlx_lm's tokens/s counts the masked-in target positions; without --mask-prompt those are
    # the examples' real tokens, so it is the same measure as ours.
    secs = [args.report_every / r["iterations_per_second"] for r in steady]
    toks = [r["tokens_per_second"] * s for r, s in zip(steady, secs)]
    return {
        "name": "mlx_lm lora",
        "tokens_per_second": sum(toks) / sum(secs),
        "tokens_per_cpu_second": sum(toks) / sum(r["cpu_seconds"] for r in steady),
        "seconds_per_step": sum(secs) / (args.report_every * len(secs)),
        "window_tokens_per_second": [r["tokens_per_second"] for r in steady],
        "peak_memory_gb": max(r["peak_memory"] for r in reports),
        "process_wall_s": wall, "process_cpu_s": cpu,
    }


def peft(args, folder: Path) -> dict:
    cmd = [args.peft_python, str(ROOT / "benchmarks" / "peers" / "peft_train.py"), "--model-dir", str(folder),
           "--data", str(Path(args.data) / "train.jsonl"), "--batch-size", str(args.batch_size),
           "--max-seq-length", str(args.max_seq_length), "--steps", str(args.iters - args.report_every),
           "--warmup-steps", str(args.report_every), "--rank", str(args.rank), "--alpha", str(args.alpha),
           "--lr", str(args.lr), "--threads", str(args.peft_threads), "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    text, wall, cpu = run(cmd, env)
    line = next((x for x in reversed(text.splitlines()) if x.startswith("{")), None)
    if line is None:
        raise SystemExit(f"the PEFT peer printed no result:\n{text[-3000:]}")
    r = json.loads(line)
    return {
        "name": f"PyTorch {r['torch']} + PEFT {r['peft']}",
        "tokens_per_second": r["effective_tokens_per_s"],
        "computed_tokens_per_second": r["padded_tokens_per_s"],
        "tokens_per_cpu_second": float("nan"),
        "seconds_per_step": r["seconds"] / max(args.iters - args.report_every, 1),
        "peak_memory_gb": r["peak_rss_bytes"] / 1e9,
        "process_wall_s": wall, "process_cpu_s": cpu,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.iters < 2 * args.report_every:
        raise SystemExit("--iters must cover at least two report windows (the first is warm-up)")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="train-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    folder = model_folder(args.model, work)
    print(f"model folder: {folder}; data: {args.data}; {args.iters} steps of batch {args.batch_size}, "
          f"LoRA rank {args.rank} alpha {args.alpha:g} on {'all' if not args.lora_layers else args.lora_layers} "
          f"blocks", flush=True)
    rows = [ours(args, folder, work / "ours", train_on_prompt=False)]
    print(f"  done: {rows[-1]['name']}", flush=True)
    if not args.skip_plain:
        rows.append(ours(args, folder, work / "ours-plain", train_on_prompt=False, share_prefix=False))
        print(f"  done: {rows[-1]['name']}", flush=True)
    if args.train_on_prompt:
        rows.append(ours(args, folder, work / "ours-full", train_on_prompt=True))
        print(f"  done: {rows[-1]['name']}", flush=True)
    if not args.skip_mlx_lm:
        rows.append(mlx_lm(args, folder, work / "mlx_lm"))
        print(f"  done: {rows[-1]['name']}", flush=True)
    if args.peft_python:
        rows.append(peft(args, folder))
        print(f"  done: {rows[-1]['name']}", flush=True)
    width = max(len(r["name"]) for r in rows)
    print(f"\n{'trainer':<{width}}  {'eff tok/s':>9}  {'run tok/s':>9}  {'tok/CPU-s':>9}  {'s/step':>7}  "
          f"{'peak GB':>7}  {'process wall/CPU s':>18}")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['tokens_per_second']:9.1f}  {r.get('computed_tokens_per_second', r['tokens_per_second']):9.1f}  "
              f"{r['tokens_per_cpu_second']:9.1f}  "
              f"{r['seconds_per_step']:7.2f}  {r['peak_memory_gb']:7.2f}  "
              f"{r['process_wall_s']:8.1f}/{r['process_cpu_s']:.1f}")
    print("\neffective tokens/s per report window after the first (min / median / max):")
    for r in rows:
        w = sorted(r.get("window_tokens_per_second") or [])
        if w:
            print(f"  {r['name']:<{width}}  {w[0]:7.1f} / {w[len(w) // 2]:7.1f} / {w[-1]:7.1f}  "
                  f"({len(w)} windows: {', '.join(f'{x:.0f}' for x in r['window_tokens_per_second'])})")
    base = next((r for r in rows if r["name"] == "mlx_lm lora"), None)
    peer = next((r for r in rows if r["name"].startswith("PyTorch")), None)
    for r in rows:
        if not r["name"].startswith("mlx-text2sql"):
            continue
        parts = []
        if base:
            parts.append(f"{r['tokens_per_second'] / base['tokens_per_second']:.2f}x mlx_lm lora (target 3x), "
                         f"peak memory {r['peak_memory_gb'] / base['peak_memory_gb']:.2f}x mlx_lm's")
        if peer:
            parts.append(f"{r['tokens_per_second'] / peer['tokens_per_second']:.2f}x PyTorch+PEFT (target 1.75x)")
        if parts:
            print(f"{r['name']}: " + "; ".join(parts) + " in effective tokens/s")
    (work / "results.json").write_text(json.dumps(rows, indent=2))
    print(f"\nresults: {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
