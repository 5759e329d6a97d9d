"""The trainer on tiny models: learning, QLoRA, gradient accumulation, NaN handling, best /
early stop, atomic saves, the end-to-end command, and exact resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_text2sql.errors import TrainingError
from mlx_text2sql.models.load import load_model
from mlx_text2sql.tuner.data import Encoder, load_split
from mlx_text2sql.tuner.lora import adapter_weights, apply_lora
from mlx_text2sql.tuner.trainer import (Callback, TrainArgs, ValLoss, lr_schedule, make_loss,
                                        make_optimizer, save_checkpoint, train, LoopState)
from trainkit import write_dataset

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("toy"), n_train=24, n_valid=8)


def setup(model_path, data, *, rank=8, quantize=None, seed=0, **lora):
    mx.random.seed(seed)
    kw = {"quantize": quantize, "group_size": 32} if quantize else {}
    lm = load_model(str(model_path), **kw)
    apply_lora(lm.model, rank=rank, alpha=2 * rank, **lora)
    enc = Encoder(lm.tokenizer, lm.eos, 512)
    return lm, load_split(data / "train.jsonl", enc), load_split(data / "valid.jsonl", enc)


def test_loss_falls_on_a_toy_task(tiny_llama, toy_data, tmp_path):
    lm, tr, va = setup(tiny_llama, toy_data)
    loss = make_loss(lm.model)
    assert loss.answer_only_head  # llama splits into body + lm_head
    val = ValLoss(loss, va, 4, -1)
    opt = make_optimizer("adamw", 2e-2, schedule="cosine", warmup=2, total=24)
    args = TrainArgs(iters=24, batch_size=4, report_every=4, eval_every=12, save_every=100,
                     adapter_path=str(tmp_path / "ad"))
    r = train(lm.model, opt, tr, args, loss=loss, metrics=[val])
    train_losses = [h["loss"] for h in r.history if h["type"] == "train"]
    vals = [h["val_loss"] for h in r.history if h["type"] == "eval"]
    assert train_losses[-1] < train_losses[0] - 0.4, train_losses
    assert vals[-1] < vals[0] - 0.4, vals
    # the best checkpoint is the evaluation with the lowest validation loss (which of the last
    # two that is depends on float rounding: a toy task at a high learning rate)
    evals = [h for h in r.history if h["type"] == "eval"]
    best = min(evals, key=lambda h: h["val_loss"])
    assert r.state.best_step == best["step"] and r.state.best_value == pytest.approx(best["val_loss"])
    assert (tmp_path / "ad" / "best" / "adapters.npz").is_file()


def test_answer_only_head_equals_full_logits(tiny_llama, toy_data):
    """The gathered projection computes the same loss as full logits masked to the answer."""
    from mlx_text2sql.tuner.data import collate

    lm, tr, _ = setup(tiny_llama, toy_data)
    b = collate(tr.samples[:3])
    args = [mx.array(x) for x in (b.inputs, b.index, b.targets, b.weights)]
    s, n = make_loss(lm.model)(lm.model, *args)
    logits = lm.model(args[0])
    B, L, V = logits.shape
    mask = np.zeros((B, L), np.float32)
    tgt = np.zeros((B, L), np.int32)
    for r, smp in enumerate(tr.samples[:3]):
        mask[r, smp.prompt_len - 1: len(smp.tokens) - 1] = 1
        tgt[r, : len(smp.tokens) - 1] = smp.tokens[1:]
    ce = nn.losses.cross_entropy(logits, mx.array(tgt)) * mx.array(mask)
    assert int(n.item()) == int(mask.sum())
    assert abs(s.item() - ce.sum().item()) < 1e-3 * abs(ce.sum().item())


def test_qlora_trains_and_leaves_the_quantized_base_untouched(tiny_llama, toy_data, tmp_path):
    lm, tr, _ = setup(tiny_llama, toy_data, quantize=4)
    q = lm.model.model.layers[0].self_attn.q_proj
    assert isinstance(q.linear, nn.QuantizedLinear)
    base = {k: np.array(v) for k, v in tree_flatten(lm.model.parameters()) if "lora" not in k}
    opt = make_optimizer("adamw", 2e-2, warmup=2, total=16)
    r = train(lm.model, opt, tr, TrainArgs(iters=16, report_every=4, save_every=100,
                                           adapter_path=str(tmp_path / "ad")))
    losses = [h["loss"] for h in r.history if h["type"] == "train"]
    assert losses[-1] < losses[0] - 0.3, losses
    after = {k: np.array(v) for k, v in tree_flatten(lm.model.parameters()) if "lora" not in k}
    assert after.keys() == base.keys()
    assert all(np.array_equal(base[k], after[k]) for k in base)
    assert after["model.layers.0.self_attn.q_proj.linear.weight"].dtype == np.uint32


def test_accumulation_and_streams_equal_the_combined_batch(tiny_llama, toy_data, tmp_path):
    """Token-weighted sums: 2 micro-batches of 2, or a batch of 4 split over 2 or 4 CPU
    streams, give the gradient of the batch of 4 on one stream."""
    results = []
    for batch, accum, streams in ((4, 1, 1), (2, 2, 1), (4, 1, 2), (4, 1, 4)):
        lm, tr, _ = setup(tiny_llama, toy_data)
        tr.samples = tr.samples[:4]
        opt = optim.SGD(learning_rate=1.0)  # the update is the gradient itself
        r = train(lm.model, opt, tr, TrainArgs(iters=1, batch_size=batch, grad_accum=accum, save_every=100,
                                               streams=streams, max_grad_norm=None,
                                               adapter_path=str(tmp_path / f"a{batch}{streams}")))
        results.append((r.final_loss, {k: np.array(v) for k, v in adapter_weights(lm.model).items()}))
    l1, w1 = results[0]
    assert any(np.abs(w1[k]).max() > 1e-3 for k in w1 if k.endswith("lora_b"))  # it did move
    for l2, w2 in results[1:]:
        assert abs(l1 - l2) < 1e-5
        assert all(np.allclose(w1[k], w2[k], atol=1e-6, rtol=1e-4) for k in w1)


def test_validation_loss_is_the_same_on_one_or_several_streams(tiny_llama, toy_data):
    lm, _, va = setup(tiny_llama, toy_data)
    loss = make_loss(lm.model)
    values = [ValLoss(loss, va, 4, -1, streams=n)(lm.model) for n in (1, 2, 4)]
    assert values[0] == pytest.approx(values[1], rel=1e-6) == pytest.approx(values[2], rel=1e-6)
    assert 4 < values[0] < 7  # a random model over a 384-token vocabulary: about ln(384)


def test_lr_schedules():
    cos = lr_schedule(1.0, schedule="cosine", warmup=4, total=14, min_lr=0.1)
    got = [cos(mx.array(s)).item() for s in range(14)]
    assert got[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert got[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 0.5)))
    assert all(a >= b for a, b in zip(got[3:], got[4:]))
    lin = lr_schedule(2.0, schedule="linear", total=10)
    assert [lin(mx.array(s)).item() for s in (0, 5)] == pytest.approx([2.0, 1.0])
    assert lr_schedule(3.0)(mx.array(99)).item() == 3.0


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_adapter(tiny_llama, toy_data, tmp_path):
    lm, tr, _ = setup(tiny_llama, toy_data)
    good = make_loss(lm.model)
    calls = {"n": 0}

    def poisoned(model, *a):
        calls["n"] += 1
        s, n = good(model, *a)
        return (s * float("nan") if calls["n"] >= 3 else s), n

    out = tmp_path / "ad"
    opt = make_optimizer("adamw", 1e-2)
    args = TrainArgs(iters=10, save_every=1, adapter_path=str(out), compile=False, streams=1)
    with pytest.raises(TrainingError, match="NaN at step 3.*holds the weights after step 2"):
        train(lm.model, opt, tr, args, loss=poisoned, adapter_config={"base_model": "tiny"})
    saved = np.load(out / "adapters.npz")
    step2 = np.load(out / "checkpoints" / "step-000002" / "adapters.npz")
    assert all(np.array_equal(saved[k], step2[k]) and np.isfinite(saved[k]).all() for k in saved.files)


class Scripted:
    """A pluggable metric returning scripted values (higher is better), as exec accuracy would."""

    name = "exec_acc"
    higher_is_better = True

    def __init__(self, values):
        self.values = list(values)

    def __call__(self, model):
        return self.values.pop(0)


def test_best_metric_is_pluggable_and_early_stopping(tiny_llama, toy_data, tmp_path):
    lm, tr, _ = setup(tiny_llama, toy_data)
    seen = []

    class Spy(Callback):
        def on_eval(self, info):
            seen.append((info["step"], info["exec_acc"]))

    out = tmp_path / "ad"
    args = TrainArgs(iters=20, eval_every=2, save_every=100, early_stop=2, best_metric="exec_acc",
                     adapter_path=str(out))
    r = train(lm.model, make_optimizer("adam", 1e-3), tr, args,
              metrics=[Scripted([0.1, 0.3, 0.5, 0.4, 0.45, 0.9])], callbacks=[Spy()],
              adapter_config={"base_model": "tiny"})
    # evals at steps 0, 2, 4, 6, 8: best 0.5 at step 4, then two without improvement
    assert seen == [(0, 0.1), (2, 0.3), (4, 0.5), (6, 0.4), (8, 0.45)]
    assert r.stopped_early and r.state.step == 8 and r.state.best_step == 4
    best = json.loads((out / "best" / "adapter_config.json").read_text())
    assert best["best"] == {"metric": "exec_acc", "value": 0.5, "step": 4}
    assert (out / "adapters.npz").is_file() and (out / "checkpoints" / "step-000008").is_dir()


def test_saves_are_atomic(tiny_llama, toy_data, tmp_path, monkeypatch):
    lm, tr, _ = setup(tiny_llama, toy_data)
    out = tmp_path / "ad"
    opt = make_optimizer("adam", 1e-2)
    train(lm.model, opt, tr, TrainArgs(iters=2, save_every=1, adapter_path=str(out)))
    before = (out / "adapters.npz").read_bytes()
    ck_before = sorted(p.name for p in (out / "checkpoints").iterdir())

    def broken(path, **arrays):  # dies half-way through writing
        Path(path).write_bytes(b"PK\x03\x04partial")
        raise OSError("disk full")

    monkeypatch.setattr(mx, "savez", broken)
    from mlx_text2sql.tuner.lora import save_adapter

    with pytest.raises(OSError, match="disk full"):
        save_adapter(lm.model, out, {})
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(lm.model, opt, LoopState(step=3), out, {})
    assert (out / "adapters.npz").read_bytes() == before
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ck_before  # no step-000003
    assert not [p for p in out.rglob(".*")]  # no temporary files or folders left


def test_end_to_end_main_writes_exactly_these_files(tiny_llama, toy_data, tmp_path, capsys):
    from mlx_text2sql.train import main

    out = tmp_path / "adapters"
    rc = main(["--model", str(tiny_llama), "--data", str(toy_data), "--iters", "3", "--batch-size", "2",
               "--eval-every", "2", "--save-every", "2", "--report-every", "1", "--val-batches", "2",
               "--lr", "1e-2", "-o", str(out), "--quiet"])
    assert rc == 0
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == sorted([
        "adapter_config.json", "adapters.npz", "log.jsonl", "loss.png", "summary.txt", "train_config.yaml",
        "best/adapter_config.json", "best/adapters.npz",
        *[f"checkpoints/step-00000{s}/{f}" for s in (2, 3)
          for f in ("adapter_config.json", "adapters.npz", "state.npz", "trainer_state.json")],
    ])
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["type"], r["step"]) for r in log] == [
        ("eval", 0), ("train", 1), ("train", 2), ("eval", 2), ("train", 3), ("eval", 3)]
    assert all(r["tokens_per_second"] > 0 and r["peak_memory_gb"] > 0 for r in log if r["type"] == "train")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model"] == str(tiny_llama) and cfg["total_steps"] == 3
    assert cfg["train"]["lr"] == 1e-2 and cfg["train"]["batch_size"] == 2
    assert cfg["prompt"]["eos"] == "<|im_end|>" and cfg["lora"]["rank"] == 8
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    summary = capsys.readouterr().out
    assert "3 of 3 steps" in summary and "Validation loss" in summary
    # the saved settings rerun the same training
    from mlx_text2sql.train import settings

    again, _, _ = settings(["-c", str(out / "train_config.yaml")])
    assert {k: again[k] for k in cfg["train"]} == cfg["train"]

    from mlx_text2sql.tuner.lora import load_with_adapter

    lm = load_with_adapter(out)
    assert lm.adapter["lora"]["rank"] == 8


KILL_AT_STEP_5 = """
import os, signal, sys
from mlx_text2sql.tuner import callbacks
original = callbacks.ProgressBar.on_report
def on_report(self, info):
    original(self, info)
    if info["step"] == 5:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, mid-epoch, after step 5 was logged
callbacks.ProgressBar.on_report = on_report
from mlx_text2sql.train import main
sys.exit(main(sys.argv[1:]))
"""


def test_resume_after_sigkill_matches_an_uninterrupted_run(tiny_llama, toy_data, tmp_path):
    def cmd(out, *extra):
        return ["--model", str(tiny_llama), "--data", str(toy_data), "--iters", "8", "--batch-size", "4",
                "--save-every", "4", "--report-every", "1", "--eval-every", "100", "--lr", "1e-2",
                "--dropout", "0.1", "--warmup", "2", "-o", str(out), "--quiet", *extra]

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    full = subprocess.run([sys.executable, "-m", "mlx_text2sql.train", *cmd(tmp_path / "full")],
                          env=env, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    killed = subprocess.run([sys.executable, "-c", KILL_AT_STEP_5, *cmd(tmp_path / "cut")],
                            env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == ["step-000004"]
    resumed = subprocess.run([sys.executable, "-m", "mlx_text2sql.train", *cmd(tmp_path / "cut", "--resume")],
                             env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr

    def losses(out):
        return [(r["step"], r["loss"], r["lr"]) for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())
                if r["type"] == "train"]

    a, b = losses(tmp_path / "full"), losses(tmp_path / "cut")
    assert [s for s, _, _ in b] == list(range(1, 9))  # step 5 logged once: the killed run's entry dropped
    assert a == b  # same losses and learning rates, step for step (24 examples = 6 batches: 2 epochs)
    wa = np.load(tmp_path / "full" / "adapters.npz")
    wb = np.load(tmp_path / "cut" / "adapters.npz")
    assert all(np.array_equal(wa[k], wb[k]) for k in wa.files)


@pytest.mark.slow
def test_two_steps_on_the_real_smollm2(tmp_path):
    """The default model (the SmolLM2-135M-Instruct GGUF, dequantized on CPU) trains end to end."""
    from mlx_text2sql.train import main

    data = write_dataset(tmp_path / "data", n_train=8, n_valid=4)
    out = tmp_path / "adapters"
    assert main(["--data", str(data), "--iters", "2", "--batch-size", "2", "--eval-every", "2",
                 "--val-batches", "1", "--report-every", "1", "-o", str(out), "--quiet", "--no-plot"]) == 0
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model"] == "smollm2-135m" and cfg["dequantized"] is True
    assert cfg["prompt"]["eos"] == "<|im_end|>"
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["type"] == "train"]
    assert len(losses) == 2 and all(np.isfinite(losses)) and losses[0] < 5  # an instruct model: low start
    weights = np.load(out / "adapters.npz")
    assert len(weights.files) == 30 * 7 * 2  # 30 blocks x 7 projections x (A, B)
