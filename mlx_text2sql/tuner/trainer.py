"""The training loop: one :func:`train` to read top to bottom, over the parts beside it.

- :mod:`.loss`: the loss computed only at answer positions; shared-prefix packing
- :mod:`.step`: the batches a step draws; the compiled step over streams, micro-batches, processes
- :mod:`.schedule`: the optimizer and its learning-rate schedule
- :mod:`.validation`: metrics, their registry, the best metric (``best/``, early stopping)
- :mod:`.checkpoints`: checkpoints and resuming from them
- :mod:`.callbacks`: the hooks the loop calls, the report window, progress bar and log.jsonl
- :mod:`.runtime`: CPU streams, OpenBLAS threads, MLX's buffer cache, gradient checkpointing

What makes a step cheap (on a CPU especially): the vocabulary projection runs only where there
is loss; batches hold examples of similar length (see :func:`.data.epoch_batches`) padded to a
multiple of 16; one host sync per optimizer step. The names callers use from those modules are
importable from this one as well.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path

import mlx.core as mx

from ..errors import TrainingError
from ..training.settings import trainer_fields
from .callbacks import Callback, Hooks, ReportWindow
from .checkpoints import (CHECKPOINTS, LoopState, checkpoint_dir, latest_checkpoint, load_checkpoint,
                          save_checkpoint)
from .data import TokenizedSet
from .fastops import fast_llama_ops
from .lora import save_adapter
from .loss import check_packed_loss, make_loss, make_packed_loss, split_head
from .runtime import (BUFFER_CACHE_BYTES, auto_streams, blas_threads, cap_buffer_cache, cpu_streams,
                      grad_checkpointing, openblas_threads)
from .schedule import TimeBudget, lr_schedule, make_optimizer
from .step import BatchFeed, StepStats, TrainStep
from .validation import METRIC_FACTORIES, BestTracker, Metric, ValLoss, register_metric, run_metrics

__all__ = [
    "BUFFER_CACHE_BYTES", "CHECKPOINTS", "METRIC_FACTORIES", "Callback", "LoopState", "Metric", "TrainArgs",
    "TrainResult", "ValLoss", "auto_streams", "blas_threads", "cap_buffer_cache", "check_packed_loss",
    "checkpoint_dir", "cpu_streams", "grad_checkpointing", "latest_checkpoint", "load_checkpoint",
    "lr_schedule", "make_loss", "make_optimizer", "make_packed_loss", "openblas_threads", "register_metric",
    "save_checkpoint", "split_head", "train",
]

# The loop's settings: ``iters`` (optimizer steps, worked out by the caller from iters or
# epochs), every setting of the table in training/settings.py that names a ``trainer`` field
# (batch_size, grad_accum, max_grad_norm, grad_checkpoint, train_on_prompt, eval_every,
# val_batches, early_stop, best_metric, save_every, keep_checkpoints, report_every, seed,
# adapter_path, streams, share_prefix: same defaults), and the run options below.
TrainArgs = make_dataclass("TrainArgs", [
    ("iters", int),
    *trainer_fields(),
    ("pad_to", int, 16),               # batch lengths and loss positions rounded up to a multiple
    ("compile", bool, True),
    ("fast_ops", bool, True),          # polynomial exp for softmax / SiLU (see .fastops)
])
TrainArgs.__module__ = __name__
TrainArgs.__doc__ = "The loop's settings (a narrow view of the full config; see the table in training/settings.py)."


@dataclass
class TrainResult:
    state: LoopState
    final_loss: float | None
    first_loss: float | None
    stopped_early: bool = False
    stopped_for_time: bool = False  # the time limit ended the run before args.iters
    history: list[dict] = field(default_factory=list)


@dataclass
class _Run:
    """What the loop's evaluations and saves share."""

    model: object
    optimizer: object
    args: TrainArgs
    state: LoopState
    metrics: list
    best: BestTracker
    emit: Hooks
    adapter_config: dict
    rank: int
    blas: int | None                  # OpenBLAS threads for metrics (steps may run one per stream)
    budget: TimeBudget
    history: list = field(default_factory=list)

    def evaluate(self, initial: bool = False) -> bool:
        """Run the metrics, log them; True when early stopping triggers."""
        tic = time.perf_counter()
        values = run_metrics(self.model, self.metrics, self.blas, initial=initial)
        self.budget.timed_eval(time.perf_counter() - tic)
        info = {"type": "eval", "step": self.state.step, **values}
        self.history.append(info)
        self.emit("on_eval", info)
        return self.best.consider(self.model, self.state, values)

    def save(self) -> None:
        """The adapter (adapter_path/) and a checkpoint (rank 0 only)."""
        self.state.wall_seconds = self.budget.spent()
        if self.rank == 0:
            path = Path(self.args.adapter_path)
            save_adapter(self.model, path, self.adapter_config)
            ck = save_checkpoint(self.model, self.optimizer, self.state, path, self.adapter_config,
                                 self.args.keep_checkpoints)
            self.emit("on_save", {"step": self.state.step, "checkpoint": str(ck), "adapter": str(path)})

    def fail(self, stats: StepStats) -> None:
        """Raise for a step whose loss or gradient norm is not finite (its update undone), after
        saving the weights of the step before."""
        path = Path(self.args.adapter_path)
        if self.rank == 0:
            save_adapter(self.model, path, self.adapter_config)
        lv, step = stats.loss, self.state.step
        raise TrainingError(
            f"the loss became {'NaN' if math.isnan(lv) else lv} at step {step} (gradient norm {stats.grad_norm}); "
            f"{path} holds the weights after step {step - 1}. Lower --lr, raise --warmup or keep --max-grad-norm on.")


def train(model, optimizer, train_set: TokenizedSet, args: TrainArgs, *, loss=None,
          metrics: list[Metric] | None = None, callbacks: list[Callback] | None = None,
          adapter_config: dict | None = None, start: LoopState | None = None) -> TrainResult:
    """Train the model's trainable (LoRA) parameters for ``args.iters`` optimizer steps.

    metrics: evaluated every ``eval_every`` steps (and before the first step of a fresh run);
        the one named ``args.best_metric`` picks ``adapter_path/best`` and drives early stopping.
    adapter_config: written into every adapter_config.json this run saves.
    start: a LoopState from :func:`load_checkpoint` to continue a run.
    Files (rank 0 only): adapter_path/{adapters.npz, adapter_config.json} every ``save_every``
    steps and at the end, adapter_path/best/, adapter_path/checkpoints/step-NNNNNN/.
    """
    world = mx.distributed.init()
    size, rank = world.size(), world.rank()
    cap_buffer_cache()
    if args.batch_size % size:
        raise TrainingError(f"batch size {args.batch_size} must be divisible by the {size} processes")
    if len(train_set) < args.batch_size:
        raise TrainingError(f"the training set has {len(train_set)} usable examples, fewer than "
                            f"the batch size {args.batch_size}")
    loss = loss or make_loss(model)
    metrics = list(metrics or [])
    emit = Hooks(callbacks or [], enabled=rank == 0)
    adapter_config = dict(adapter_config or {})
    best = BestTracker(next((m for m in metrics if m.name == args.best_metric), None), args.adapter_path,
                       adapter_config, args.early_stop, write=rank == 0)
    state = start or LoopState()
    step = TrainStep(model, optimizer, loss, train_set, args, size, rank)
    feed = BatchFeed(train_set, args, step.groups, len(step.streams), state, size, rank)
    budget = TimeBudget(args.time_limit, state.wall_seconds)
    run = _Run(model, optimizer, args, state, metrics, best, emit, adapter_config, rank, openblas_threads(), budget)
    first_loss = last_loss = None
    stopped_early = out_of_time = False
    window = ReportWindow()
    model.train()
    with grad_checkpointing(model, args.grad_checkpoint), fast_llama_ops(model, args.fast_ops) as fast, \
            blas_threads(1 if len(step.streams) > 1 else None):
        emit("on_start", {"step": state.step, "iters": args.iters, "examples": len(train_set),
                          "batches_per_epoch": len(feed.order), "processes": size, "fast_ops": fast,
                          "streams": len(step.streams), "shared_prefix": step.groups is not None,
                          "answer_only_head": bool(getattr(loss, "answer_only_head", False))})
        if start is None and metrics:
            run.evaluate(initial=True)
        while state.step < args.iters:
            tic, cpu_tic = time.perf_counter(), time.process_time()
            stats = step(feed, args.grad_accum)
            state.step += 1
            if not stats.finite:
                run.fail(stats)
            dt = time.perf_counter() - tic
            first_loss = stats.loss if first_loss is None else first_loss
            last_loss = stats.loss
            state.tokens += stats.tokens
            state.seconds += dt
            window.add(stats.loss, stats.tokens, stats.loss_tokens, stats.computed, dt,
                       time.process_time() - cpu_tic)
            emit("on_step", state.step)
            last = state.step == args.iters
            if not last and _agree(budget.exhausted(dt), world, size):
                last = out_of_time = True
            if state.step % args.report_every == 0 or last:
                info = window.report(step=state.step, epoch=feed.epoch, lr=float(optimizer.learning_rate.item()),
                                     grad_norm=stats.grad_norm, trained_tokens=state.tokens,
                                     peak_memory_gb=mx.get_peak_memory() / 1e9, seconds=state.seconds)
                run.history.append(info)
                emit("on_report", info)
            stop = False
            if metrics and (state.step % args.eval_every == 0 or last):
                stop = run.evaluate()
            if state.step % args.save_every == 0 or last or stop:
                run.save()
            if stop:
                stopped_early = True
            if stop or out_of_time:
                break
    result = TrainResult(state=state, final_loss=last_loss, first_loss=first_loss,
                         stopped_early=stopped_early, stopped_for_time=out_of_time, history=run.history)
    emit("on_end", {"step": state.step, "stopped_early": stopped_early, "stopped_for_time": out_of_time,
                    "best_value": state.best_value, "best_step": state.best_step, "tokens": state.tokens,
                    "seconds": state.seconds})
    return result


def _agree(flag: bool, world, size: int) -> bool:
    """One decision for every process (any one out of time stops them all), so all stop at the
    same step."""
    if size == 1:
        return flag
    return bool(mx.distributed.all_sum(mx.array(1.0 if flag else 0.0), group=world).item() > 0)
