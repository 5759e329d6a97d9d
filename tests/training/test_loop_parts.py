"""The parts train() wires, one at a time: the batches a step draws (and redraws after a
resume), the report window, the best-metric tracker, and the old import path of each name."""

import math

import numpy as np
import pytest

from mlx_text2sql.tuner import trainer as T
from mlx_text2sql.tuner.callbacks import ReportWindow
from mlx_text2sql.tuner.checkpoints import LoopState
from mlx_text2sql.tuner.data import Sample, TokenizedSet, DataStats
from mlx_text2sql.tuner.step import BatchFeed
from mlx_text2sql.tuner.validation import BestTracker


# Where each name train() is built from lives; tuner.trainer re-exports them all.
HOMES = {
    "loss": ["split_head", "make_loss", "make_packed_loss", "check_packed_loss"],
    "schedule": ["make_optimizer", "lr_schedule"],
    "validation": ["Metric", "ValLoss", "METRIC_FACTORIES", "register_metric"],
    "checkpoints": ["CHECKPOINTS", "LoopState", "checkpoint_dir", "latest_checkpoint", "save_checkpoint",
                    "load_checkpoint"],
    "runtime": ["auto_streams", "cpu_streams", "openblas_threads", "blas_threads", "BUFFER_CACHE_BYTES",
                "cap_buffer_cache", "grad_checkpointing"],
    "callbacks": ["Callback"],
    "trainer": ["TrainArgs", "TrainResult", "train"],
}


def test_every_name_of_the_trainer_is_the_object_its_module_defines():
    import importlib

    assert sorted(n for names in HOMES.values() for n in names) == sorted(T.__all__)
    for module, names in HOMES.items():
        home = importlib.import_module(f"mlx_text2sql.tuner.{module}")
        for name in names:
            obj = getattr(T, name)
            assert getattr(home, name) is obj, name
            if callable(obj) and hasattr(obj, "__module__"):
                assert obj.__module__ == home.__name__, name


def _set(n: int, seed: int = 0) -> TokenizedSet:
    rng = np.random.default_rng(seed)
    samples = [Sample(tokens=np.arange(1, int(rng.integers(6, 40)), dtype=np.int32), prompt_len=3, where=f"t:{i}")
               for i in range(n)]
    return TokenizedSet(samples=samples, stats=DataStats())


def _draw(feed: BatchFeed, k: int) -> list:
    return [[(p.inputs.tolist(), p.index.tolist()) for p in feed.next()] for _ in range(k)]


def test_a_feed_resumed_from_its_state_draws_what_the_uninterrupted_feed_draws():
    data = _set(9)  # batch 2: 4 batches an epoch, the odd example dropped
    args = T.TrainArgs(iters=1, batch_size=2)
    whole = BatchFeed(data, args, None, 1, LoopState())
    first = _draw(whole, 5)
    assert (whole.state.epoch, whole.state.position) == (1, 1) and whole.epoch == 1.25
    rest = _draw(whole, 5)
    resumed = BatchFeed(data, args, None, 1, LoopState(epoch=1, position=1))
    assert _draw(resumed, 5) == rest
    assert (resumed.state.epoch, resumed.state.position) == (2, 2)
    assert first[:4] != first[4:] + rest[:3]  # epoch 1 is drawn in its own order, not epoch 0's again


def test_a_feed_splits_each_batch_over_streams_and_processes():
    data = _set(16)
    args = T.TrainArgs(iters=1, batch_size=8)
    one = BatchFeed(data, args, None, 1, LoopState())
    whole = one.next()[0]
    seen = []
    for rank in range(2):
        parts = BatchFeed(data, args, None, 2, LoopState(), size=2, rank=rank).next()
        assert [len(p.inputs) for p in parts] == [2, 2]
        seen += [row for p in parts for row in p.inputs.tolist()]
    # every example of the batch once, over 2 processes x 2 streams (rows re-padded per part)
    strip = lambda row: tuple(x for x in row if x)  # noqa: E731
    assert sorted(map(strip, seen)) == sorted(map(strip, whole.inputs.tolist()))


def test_the_report_window_averages_the_steps_since_the_last_report():
    w = ReportWindow()
    w.add(4.0, tokens=100, loss_tokens=10, computed=80, seconds=2.0, cpu=3.0)
    w.add(2.0, tokens=300, loss_tokens=30, computed=120, seconds=2.0, cpu=1.0)
    info = w.report(step=2, epoch=0.5, lr=1e-3, grad_norm=0.7, trained_tokens=400, peak_memory_gb=1.5,
                    seconds=4.00049)
    assert info == {"type": "train", "step": 2, "epoch": 0.5, "loss": 3.0, "lr": 1e-3, "grad_norm": 0.7,
                    "tokens_per_second": 100.0, "computed_tokens_per_second": 50.0, "cpu_seconds_per_step": 2.0,
                    "trained_tokens": 400, "loss_tokens": 40, "peak_memory_gb": 1.5, "seconds": 4.0}
    w.add(1.0, tokens=50, loss_tokens=5, computed=50, seconds=0.5, cpu=0.25)
    info = w.report(step=3, epoch=0.75, lr=1e-3, grad_norm=0.1, trained_tokens=450, peak_memory_gb=1.5,
                    seconds=4.5)
    assert (info["loss"], info["tokens_per_second"], info["loss_tokens"], info["cpu_seconds_per_step"]) == \
        (1.0, 100.0, 5, 0.25)


class _Acc:
    name = "acc"
    higher_is_better = True


@pytest.mark.parametrize("early_stop", [None, 2])
def test_the_best_tracker_keeps_the_best_finite_value_and_counts_evaluations_since(early_stop):
    best = BestTracker(_Acc(), "unused", {}, early_stop, write=False)
    state = LoopState()
    seen = []
    for step, v in [(0, math.nan), (1, 0.5), (2, 0.4), (3, 0.6), (4, 0.6), (5, math.inf), (6, 0.7)]:
        state.step = step
        seen.append((best.consider(None, state, {"acc": v, "val_loss": 0.0}), state.best_value, state.bad_evals))
    stops = [s for s, _, _ in seen]
    assert [(b, n) for _, b, n in seen] == [(None, 1), (0.5, 0), (0.5, 1), (0.6, 0), (0.6, 1), (0.6, 2), (0.7, 0)]
    assert stops == ([False] * 7 if early_stop is None else [False] * 5 + [True, False])
    assert state.best_step == 6
    assert best.consider(None, state, {"val_loss": 0.0}) is False and state.bad_evals == 0  # not this metric
