"""``time_limit``: the loop stops when another step and the closing validation would not fit,
validates and saves as at its last step, and counts time spent before a resume."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest

from mlx_text2sql.models.load import load_model
from mlx_text2sql.tuner import schedule
from mlx_text2sql.tuner.data import Encoder, load_split
from mlx_text2sql.tuner.lora import apply_lora
from mlx_text2sql.tuner.schedule import TimeBudget
from mlx_text2sql.tuner.trainer import (Callback, TrainArgs, ValLoss, load_checkpoint, make_loss, make_optimizer,
                                        train)
from trainkit import write_dataset


class Clock:
    """A stand-in for the budget's ``time`` module: seconds move only when the test says."""

    def __init__(self):
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


class Tick(Callback):
    """Every optimizer step 'takes' ``seconds`` on the fake clock."""

    def __init__(self, clock: Clock, seconds: float):
        self.clock, self.seconds = clock, seconds
        self.evals: list[int] = []

    def on_step(self, step):
        self.clock.now += self.seconds

    def on_eval(self, info):
        self.evals.append(info["step"])


@pytest.fixture()
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(schedule, "time", c)
    return c


def test_budget_reserves_the_next_step_and_the_closing_validation(clock):
    b = TimeBudget(1.0, spent_seconds=20.0)  # 60 s, 20 of them spent before a resume
    assert b.spent() == 20.0 and not b.exhausted(10.0)
    clock.now += 25.0
    assert b.spent() == 45.0
    assert not b.exhausted(15.0)   # 45 + 15 = 60: still fits
    assert b.exhausted(15.1)
    b.timed_eval(8.0)
    b.timed_eval(3.0)              # the longest validation is what is reserved
    assert b.longest_eval == 8.0
    assert b.exhausted(7.1) and not b.exhausted(7.0)
    assert not TimeBudget(None, 1e9).exhausted(1e9)  # no limit


@pytest.fixture(scope="module")
def toy(tmp_path_factory, tiny_llama):
    data = write_dataset(tmp_path_factory.mktemp("toy"), n_train=24, n_valid=8)
    return tiny_llama, data


def _setup(toy):
    model_path, data = toy
    mx.random.seed(0)
    lm = load_model(str(model_path))
    apply_lora(lm.model, rank=4, alpha=8)
    enc = Encoder(lm.tokenizer, lm.eos, 512)
    return lm, load_split(data / "train.jsonl", enc), load_split(data / "valid.jsonl", enc)


def test_the_limit_ends_the_run_validated_and_saved_and_a_resume_keeps_counting(toy, clock, tmp_path):
    lm, tr, va = _setup(toy)
    out = tmp_path / "ad"
    tick = Tick(clock, 10.0)
    args = TrainArgs(iters=20, batch_size=4, eval_every=100, save_every=100, val_batches=1,
                     adapter_path=str(out), time_limit=0.9)  # 54 s; each step takes 10
    r = train(lm.model, make_optimizer("adam", 1e-3), tr, args, metrics=[ValLoss(make_loss(lm.model), va, 4, 1)],
              callbacks=[tick], adapter_config={"base_model": "tiny"})
    # after step 5 (50 s) one more step still fits; after step 6 (60 s) it is past the limit
    assert r.stopped_for_time and not r.stopped_early
    assert r.state.step == 6
    assert tick.evals == [0, 6]  # the closing validation ran at the step the limit ended
    assert r.state.best_step == 6 and (out / "best" / "adapters.npz").is_file()
    ck = out / "checkpoints" / "step-000006"
    saved = json.loads((ck / "trainer_state.json").read_text())
    assert saved["step"] == 6 and saved["wall_seconds"] == pytest.approx(60.0)

    # resumed with a larger limit, the 60 s already spent count: 90 s allow three more steps
    lm2, tr2, va2 = _setup(toy)
    opt = make_optimizer("adam", 1e-3)
    state = load_checkpoint(lm2.model, opt, ck)
    assert state.wall_seconds == pytest.approx(60.0)
    tick2 = Tick(clock, 10.0)
    args2 = TrainArgs(iters=20, batch_size=4, eval_every=100, save_every=100, val_batches=1,
                      adapter_path=str(out), time_limit=1.5)
    r2 = train(lm2.model, opt, tr2, args2, metrics=[ValLoss(make_loss(lm2.model), va2, 4, 1)], callbacks=[tick2],
               adapter_config={"base_model": "tiny"}, start=state)
    assert r2.stopped_for_time and r2.state.step == 9
    assert r2.state.wall_seconds == pytest.approx(90.0)


def test_without_a_limit_the_run_takes_all_its_steps(toy, clock, tmp_path):
    lm, tr, _ = _setup(toy)
    tick = Tick(clock, 1e6)  # however long the steps take
    r = train(lm.model, make_optimizer("adam", 1e-3), tr,
              TrainArgs(iters=4, batch_size=4, save_every=100, adapter_path=str(tmp_path / "ad")),
              callbacks=[tick])
    assert r.state.step == 4 and not r.stopped_for_time


def test_the_command_reports_the_limit(toy, tmp_path, capsys):
    from mlx_text2sql.train import main

    model_path, data = toy
    out = tmp_path / "adapters"
    # 0.0001 min = 6 ms: the first step already takes longer
    rc = main(["--model", str(model_path), "--data", str(data), "--iters", "5", "--batch-size", "2",
               "--eval-every", "100", "--val-batches", "1", "--time-limit", "0.0001", "-o", str(out), "--quiet"])
    assert rc == 0
    summary = capsys.readouterr().out
    assert "1 of 5 steps" in summary
    assert "Stopped at step 1 of 5 by the 0.0001-minute time limit" in summary
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [(x["type"], x["step"]) for x in log] == [("eval", 0), ("train", 1), ("eval", 1)]
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["train"]["time_limit"] == 0.0001


def test_the_limit_must_be_positive(toy, tmp_path, capsys):
    from mlx_text2sql.train import main

    model_path, data = toy
    rc = main(["--model", str(model_path), "--data", str(data), "--time-limit", "0", "-o", str(tmp_path / "a")])
    assert rc == 2
    assert "time_limit must be a number > 0" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
