"""Validation during training: the metrics (:class:`Metric`, :class:`ValLoss`), the registry
other modules add metrics to (``register_metric``), running them, and tracking the best one,
which picks ``adapters/best`` and drives early stopping."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import mlx.core as mx

from .data import TokenizedSet, collate, eval_batches
from .lora import save_adapter
from .runtime import auto_streams, blas_threads, cpu_streams


class Metric(Protocol):
    """A number computed on the model during training; the best one picks ``adapters/best``."""

    name: str
    higher_is_better: bool
    # optional: ``initial = False`` skips the metric at step 0 of a fresh run

    def __call__(self, model) -> float: ...


class ValLoss:
    """Mean answer-token cross-entropy on fixed batches of the validation set."""

    name = "val_loss"
    higher_is_better = False

    def __init__(self, loss_fn, val_set: TokenizedSet, batch_size: int, val_batches: int,
                 train_on_prompt: bool = False, pad_to: int = 16, world=None, streams: int | None = None):
        self.loss_fn = loss_fn
        self.val_set = val_set
        self.size = world.size() if world is not None else 1
        self.rank = world.rank() if world is not None else 0
        self.batches = eval_batches(val_set.lengths, batch_size, None if val_batches == -1 else val_batches)
        self.train_on_prompt = train_on_prompt
        self.pad_to = pad_to
        per_process = max(1, batch_size // self.size)
        self.n_streams = max(1, min(streams or auto_streams(per_process), per_process))
        self._fn = None

    def __call__(self, model) -> float:
        streams = cpu_streams(self.n_streams) if self.n_streams > 1 else [mx.default_stream(mx.default_device())]
        if self._fn is None:
            def summed(parts):
                # each part's forward on its own stream (thread); see .runtime
                total = count = mx.array(0.0)
                for stream, part in zip(streams, parts):
                    with mx.stream(stream):
                        s, n = self.loss_fn(model, *part)
                    total, count = total + s, count + n
                return total, count

            self._fn = mx.compile(summed, inputs=model.state)
        total = count = mx.array(0.0)
        with blas_threads(1 if self.n_streams > 1 else None):
            for idx in self.batches:
                mine = idx[self.rank::self.size]
                groups = [g for g in (mine[k::self.n_streams] for k in range(self.n_streams)) if len(g)]
                parts = []
                for g in groups:
                    b = collate([self.val_set.samples[i] for i in g], self.train_on_prompt, self.pad_to)
                    parts.append(tuple(mx.array(x) for x in (b.inputs, b.index, b.targets, b.weights)))
                if not parts:
                    continue
                s, n = self._fn(parts)
                total, count = total + s, count + n
                mx.eval(total, count)
        if self.size > 1:
            both = mx.distributed.all_sum(mx.stack([total, count]), stream=mx.cpu)
            total, count = both[0], both[1]
        return float((total / mx.maximum(count, 1.0)).item())


# A registry of metrics the trainer can pick the best adapter by. Another module adds its own
# with register_metric("exec_acc", factory); factory(context) -> Metric, where context holds
# the loaded model, tokenizer, config and data folder (see train.py).
METRIC_FACTORIES: dict[str, Callable[[Any], Metric]] = {}


def register_metric(name: str, factory: Callable[[Any], Metric]) -> None:
    METRIC_FACTORIES[name] = factory


def run_metrics(model, metrics: list[Metric], blas: int | None, initial: bool = False) -> dict:
    """Every metric's value and the seconds it took (``<name>_seconds``), with dropout off and
    OpenBLAS at ``blas`` threads. initial: the run's step 0 (metrics with ``initial = False``
    are skipped)."""
    model.eval()
    out = {}
    with blas_threads(blas):
        for m in metrics:
            if initial and not getattr(m, "initial", True):
                continue  # e.g. exec_acc: the untrained model's replies say nothing
            tic = time.perf_counter()
            out[m.name] = m(model)
            out[f"{m.name}_seconds"] = round(time.perf_counter() - tic, 3)
    model.train()
    return out


class BestTracker:
    """Tracks the metric that picks ``adapter_path/best``: saves the adapter there at each new
    best value and counts the evaluations since, for early stopping.

    The best value, its step and that count live in the run's LoopState, so they survive a
    resume. write: save files (rank 0 only)."""

    def __init__(self, metric: Metric | None, adapter_path, adapter_config: dict,
                 early_stop: int | None, write: bool = True):
        self.metric = metric
        self.adapter_path = Path(adapter_path)
        self.adapter_config = adapter_config
        self.early_stop = early_stop
        self.write = write

    def consider(self, model, state, values: dict) -> bool:
        """Record ``values`` of the evaluation at ``state.step``; True when early stopping triggers."""
        metric = self.metric
        if metric is None or metric.name not in values:
            return False
        v = values[metric.name]
        better = state.best_value is None or (
            v > state.best_value if metric.higher_is_better else v < state.best_value)
        if better and math.isfinite(v):
            state.best_value, state.best_step, state.bad_evals = v, state.step, 0
            if self.write:
                save_adapter(model, self.adapter_path / "best", {
                    **self.adapter_config, "best": {"metric": metric.name, "value": v, "step": state.step}})
            return False
        state.bad_evals += 1
        return self.early_stop is not None and state.bad_evals >= self.early_stop
