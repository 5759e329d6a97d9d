"""The optimizer and its learning-rate schedule (warm-up, then constant, cosine or linear)."""

from __future__ import annotations

import math
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
