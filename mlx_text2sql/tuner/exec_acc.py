"""``exec_acc``: validation execution accuracy as a training metric (``--best-metric exec_acc``).

Validation loss ranks checkpoints by how likely the gold tokens are; what a Text2SQL user gets
is the query the model writes. This metric generates greedy SQL for a fixed, seeded sample of
validation records (``exec_acc_samples``; only records whose gold query runs on a database),
executes it read-only and scores it exactly as ``evaluate`` does
(:func:`mlx_text2sql.metrics.evaluate_prediction`), so ``adapters/best`` is the checkpoint
that answers the most validation questions right.

Generation runs through the batched engine on the model being trained (LoRA layers unmerged,
dropout off while metrics run), with no prefix store between calls: the weights change between
evaluations, so cached keys and values would be stale.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

DEFAULT_SAMPLES = 64
DEFAULT_MAX_TOKENS = 192
BATCH_SIZE = 16


def _sample(records: list[dict], n: int, seed: int) -> list[dict]:
    usable = [r for r in records if r.get("db_path") and r.get("sql")]
    if len(usable) <= n:
        return usable
    idx = sorted(random.Random(seed).sample(range(len(usable)), n))
    return [usable[i] for i in idx]


class ExecAccuracy:
    """Share of ``records`` whose greedy prediction executes to the gold result."""

    name = "exec_acc"
    higher_is_better = True
    # not at step 0: an untrained chat model answers in prose up to the token limit (slow, and
    # nothing to choose between)
    initial = False

    def __init__(self, loaded: Any, records: list[dict], base_dir: str | Path, *,
                 max_tokens: int = DEFAULT_MAX_TOKENS, batch_size: int = BATCH_SIZE,
                 timeout_s: float = 5.0):
        from ..metrics import evaluate_prediction  # noqa: F401  (fail early if unavailable)

        self.loaded = loaded
        self.records = records
        self.base_dir = Path(base_dir)
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.last: list[dict] = []

    def __call__(self, model) -> float:
        from ..engine import SQLGenerator
        from ..metrics import evaluate_prediction
        from ..prompts import record_messages

        if not self.records:
            return 0.0
        if model is not self.loaded.model:
            raise ValueError("exec_acc scores the model it was built for")
        gen = SQLGenerator(self.loaded, prefix_cache_mb=0)
        prompts = [record_messages(r) for r in self.records]
        results = gen.generate(prompts, max_tokens=self.max_tokens, temp=0.0,
                               batch_size=self.batch_size)
        scored = [evaluate_prediction(r, res.sql, base_dir=self.base_dir, timeout_s=self.timeout_s)
                  for r, res in zip(self.records, results)]
        self.last = scored
        return sum(1 for s in scored if s["match"] is True) / len(scored)


def from_context(ctx) -> ExecAccuracy:
    """The factory ``train`` calls (``tuner.validation.register_metric``): a seeded sample of
    ``<data>/valid.jsonl``."""
    from ..errors import ConfigError

    path = Path(ctx.data_dir) / "valid.jsonl"
    if not path.is_file():
        raise ConfigError(f"best_metric exec_acc needs validation records: {path} does not exist")
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                records.append(json.loads(line))
    cfg = ctx.config
    n = int(cfg.get("exec_acc_samples") or DEFAULT_SAMPLES)
    chosen = _sample(records, n, int(cfg.get("seed") or 0))
    if not chosen:
        raise ConfigError(f"best_metric exec_acc: no record of {path} has a database to execute on "
                          "(records need db_path and sql)")
    return ExecAccuracy(ctx.loaded, chosen, path.parent,
                        max_tokens=int(cfg.get("exec_acc_max_tokens") or DEFAULT_MAX_TOKENS))


def register() -> None:
    from .validation import register_metric

    register_metric("exec_acc", from_context)
