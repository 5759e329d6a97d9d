"""The optimizer, its learning-rate schedule (warm-up, then constant, cosine or linear) and the
run's wall-clock budget."""

from __future__ import annotations

import math
import time
from typing import Callable

import mlx.core as mx
import mlx.optimizers as optim


def make_optimizer(name: str, lr: float, *, schedule: str = "constant", warmup: int = 0,
                   total: int = 1, min_lr: float = 0.0, weight_decay: float = 0.0):
    """Adam or AdamW with a learning-rate schedule: linear warm-up over ``warmup`` steps, then
    constant, cosine or linear decay to ``min_lr`` at step ``total``."""
    sched = lr_schedule(lr, schedule=schedule, warmup=warmup, total=total, min_lr=min_lr)
    if name == "adamw":
        return optim.AdamW(learning_rate=sched, weight_decay=weight_decay)
    if name == "adam":
        return optim.Adam(learning_rate=sched)
    raise ValueError(f"unknown optimizer {name!r}")


def lr_schedule(lr: float, *, schedule: str = "constant", warmup: int = 0, total: int = 1,
                min_lr: float = 0.0) -> Callable:
    """The learning rate at optimizer step s (0-based) as an MLX function of s."""
    decay_steps = max(1, total - warmup)

    def fn(step):
        s = step.astype(mx.float32) if isinstance(step, mx.array) else mx.array(step, mx.float32)
        p = mx.clip((s - warmup) / decay_steps, 0.0, 1.0)
        if schedule == "cosine":
            rate = min_lr + (lr - min_lr) * 0.5 * (1.0 + mx.cos(math.pi * p))
        elif schedule == "linear":
            rate = lr + (min_lr - lr) * p
        else:
            rate = mx.array(lr, mx.float32)
        if warmup > 0:
            rate = rate * mx.minimum(1.0, (s + 1.0) / warmup)
        return rate

    return fn


class TimeBudget:
    """A wall-clock limit on the loop (``time_limit`` minutes; None = none).

    Time spent before a resume (``LoopState.wall_seconds``) counts. The loop asks after each
    step whether another step and the closing validation still fit; when not, that step is
    the run's last: validated, saved and reported like the planned last step, so the limit is
    kept with the evaluation included. The closing validation is estimated by the longest one
    timed so far (val_loss alone before the first with every metric)."""

    def __init__(self, limit_minutes: float | None, spent_seconds: float = 0.0):
        self.limit = None if limit_minutes is None else float(limit_minutes) * 60.0
        self._before = float(spent_seconds)
        self._tic = time.perf_counter()
        self.longest_eval = 0.0

    def spent(self) -> float:
        """Wall seconds of the run so far, earlier invocations included."""
        return self._before + time.perf_counter() - self._tic

    def timed_eval(self, seconds: float) -> None:
        self.longest_eval = max(self.longest_eval, seconds)

    def exhausted(self, step_seconds: float) -> bool:
        """True when one more step of ``step_seconds`` and a closing validation would pass
        the limit."""
        if self.limit is None:
            return False
        return self.spent() + step_seconds + self.longest_eval > self.limit
