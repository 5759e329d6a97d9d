"""The training loop: a compiled step on MLX primitives, one readable :func:`train`, callbacks.

What makes a step cheap (on a CPU especially):

- The vocabulary projection runs only where there is loss. The model body gives hidden states
  (B, L, D); the answer positions (N of them, N << B*L when the loss is on the SQL only) are
  gathered to (N, D) and only those go through ``lm_head`` (or the tied embedding's
  ``as_linear``), so the (B*L, V) logits and their softmax are never built.
- Batches hold examples of similar length (see :func:`.data.epoch_batches`) padded to a multiple
  of 16, and padding positions are never projected.
- One host sync per optimizer step (to check the loss is finite); reports read accumulated
  values.

Gradients are of the summed token loss and divided by the token count of the whole optimizer
step (all micro-batches, all processes), so gradient accumulation and data parallelism give
exactly the gradient of the combined batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, make_dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Protocol

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_map_with_path

from ..errors import TrainingError
from ..jsonl import write_json
from ..training.settings import trainer_fields
from .data import (Batch, TokenizedSet, collate, collate_packed, epoch_batches, eval_batches, packed_epoch,
                   prefix_groups, split_pieces)
from .fastops import fast_cross_entropy, fast_llama_ops
from .lora import save_adapter


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


# --------------------------------------------------------------------------- loss

def split_head(model) -> tuple[Callable, Callable] | None:
    """(body, head) such that ``head(body(x)) == model(x)``, or None when the architecture does
    not split that way (extra logit scaling, soft-capping, ...). Checked numerically once."""
    inner = getattr(model, "model", None)
    if inner is None or not isinstance(inner, nn.Module):
        return None
    if "lm_head" in model:
        def head(h):
            return model.lm_head(h)
    elif "embed_tokens" in inner:
        def head(h):
            return inner.embed_tokens.as_linear(h)
    else:
        return None

    def body(x):
        return inner(x)

    x = mx.array([[1, 2, 3, 4, 5, 6, 7, 8]], dtype=mx.int32)
    try:
        ref = model(x)
        got = head(body(x))
        mx.eval(ref, got)
    except Exception:
        return None
    if ref.shape != got.shape or not mx.allclose(ref, got, rtol=1e-4, atol=1e-4).item():
        return None
    return body, head


def make_loss(model, fast: bool = True) -> Callable:
    """``loss(model, inputs, index, targets, weights) -> (summed cross-entropy, token count)``.

    inputs (B, L) int32; index (N,) flat positions into B*L; targets (N,); weights (N,) 0/1.
    fast: the cross-entropy's exponentials through :func:`.fastops.fast_cross_entropy`.
    """
    split = split_head(model)
    cross_entropy = fast_cross_entropy if fast else nn.losses.cross_entropy

    if split is not None:
        body, head = split

        def logits_at(model, inputs, index):
            h = body(inputs)                         # (B, L, D)
            h = h.reshape(-1, h.shape[-1])[index]    # (N, D): only positions with loss
            return head(h)                           # (N, V)
    else:
        def logits_at(model, inputs, index):
            logits = model(inputs)                   # (B, L, V)
            return logits.reshape(-1, logits.shape[-1])[index]

    def loss(model, inputs, index, targets, weights):
        logits = logits_at(model, inputs, index).astype(mx.float32)
        ce = cross_entropy(logits, targets) * weights
        return ce.sum(), weights.sum()

    loss.answer_only_head = split is not None
    return loss


class _RecordCache:
    """Stands in for a KV cache in the prefix pass: keeps each layer's keys/values."""

    offset = 0

    def __init__(self):
        self.keys = self.values = None

    def update_and_fetch(self, keys, values):
        self.keys, self.values = keys, values
        return keys, values


class _PrefixCache:
    """Stands in for a KV cache in the segment pass: the group's prefix keys/values come first."""

    def __init__(self, keys, values, offset: int):
        self.prefix_keys, self.prefix_values, self.offset = keys, values, offset

    def update_and_fetch(self, keys, values):
        return (mx.concatenate([self.prefix_keys, keys], axis=2),
                mx.concatenate([self.prefix_values, values], axis=2))


def make_packed_loss(model, fast: bool = True) -> Callable | None:
    """The loss of a :class:`.data.PackedBatch`, or None when the model does not fit the scheme
    (needs the answer-only head split and llama-style blocks ``layer(h, mask, cache)`` whose
    attention takes a cache with ``offset``/``update_and_fetch``).

    ``loss(model, prefix_inputs, prefix_lens, seg_inputs, group_index, index, targets, weights)``
    -> (summed cross-entropy, token count), equal to :func:`make_loss` on the same examples
    unpacked: each segment attends to exactly its own prefix (left padding masked) and itself
    (causally), at the same relative positions as in the whole sequence.
    """
    inner = getattr(model, "model", None)
    if split_head(model) is None or inner is None or "embed_tokens" not in inner or "layers" not in inner \
            or "norm" not in inner:
        return None
    _, head = split_head(model)
    cross_entropy = fast_cross_entropy if fast else nn.losses.cross_entropy

    def loss(model, prefix_inputs, prefix_lens, seg_inputs, group_index, index, targets, weights):
        G, Lp = prefix_inputs.shape
        R, Ls = seg_inputs.shape
        kpos = mx.arange(Lp)
        real = kpos[None, :] >= (Lp - prefix_lens)[:, None]                      # (G, Lp)
        q, k = kpos[:, None], kpos[None, :]
        # a left-pad query may see itself only (no empty softmax rows)
        pmask = (k <= q)[None] & (real[:, None, :] | (k == q)[None])             # (G, Lp, Lp)
        spos = mx.arange(Ls)
        smask = mx.concatenate([
            mx.broadcast_to(real[group_index][:, None, :], (R, Ls, Lp)),
            mx.broadcast_to((spos[None, :] <= spos[:, None])[None], (R, Ls, Ls))], axis=2)
        layers = inner.layers
        h = inner.embed_tokens(prefix_inputs)
        caches = [_RecordCache() for _ in layers]
        pm = pmask[:, None]
        for layer, c in zip(layers, caches):
            h = layer(h, pm, cache=c)
        # (the prefix's final hidden states feed nothing; lazy evaluation skips the last
        # block's work for them, only its keys/values are used)
        h = inner.embed_tokens(seg_inputs)
        sm = smask[:, None]
        for layer, c in zip(layers, caches):
            h = layer(h, sm, cache=_PrefixCache(c.keys[group_index], c.values[group_index], Lp))
        h = inner.norm(h)
        h = h.reshape(-1, h.shape[-1])[index]
        logits = head(h).astype(mx.float32)
        ce = cross_entropy(logits, targets) * weights
        return ce.sum(), weights.sum()

    return loss


def check_packed_loss(model, plain_loss, packed_loss, samples, pad_to: int = 16) -> float:
    """Largest relative difference between the packed and plain losses on a few real samples
    (the trainer packs only when this is tiny)."""
    from .data import collate_packed, prefix_groups

    groups = prefix_groups(samples)
    pieces = [(g.prefix_len, g.members) for g in groups]
    pb = collate_packed(samples, pieces, pad_to)
    b = collate([samples[i] for _, m in pieces for i in m], False, pad_to)
    a, n = packed_loss(model, *(mx.array(x) for x in pb.arrays()))
    r, m = plain_loss(model, *(mx.array(x) for x in (b.inputs, b.index, b.targets, b.weights)))
    mx.eval(a, r, n, m)
    if n.item() != m.item():
        return float("inf")
    return abs(a.item() - r.item()) / max(abs(r.item()), 1e-9)


# --------------------------------------------------------------------------- schedule

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


# --------------------------------------------------------------------------- metrics & callbacks

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
                # each part's forward on its own stream (thread); see train()
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


class Callback:
    """Hooks the loop calls; override what you need. ``info`` dicts are JSON-ready."""

    def on_start(self, info: dict) -> None: ...
    def on_step(self, step: int) -> None: ...
    def on_report(self, info: dict) -> None: ...
    def on_eval(self, info: dict) -> None: ...
    def on_save(self, info: dict) -> None: ...
    def on_end(self, info: dict) -> None: ...


# --------------------------------------------------------------------------- checkpoints

CHECKPOINTS = "checkpoints"


@dataclass
class LoopState:
    """Where a run is: enough, with the weights and optimizer state, to continue exactly."""

    step: int = 0            # optimizer steps done
    epoch: int = 0           # current pass over the data
    position: int = 0        # batches of the current epoch already consumed
    best_value: float | None = None
    best_step: int | None = None
    bad_evals: int = 0       # evaluations since the best one
    tokens: int = 0          # real tokens trained on so far
    seconds: float = 0.0     # training time so far


def checkpoint_dir(adapter_path, step: int) -> Path:
    return Path(adapter_path) / CHECKPOINTS / f"step-{step:06d}"


def latest_checkpoint(path) -> Path | None:
    """The newest complete checkpoint under an adapter folder (or ``path`` if it is one)."""
    path = Path(path)
    if (path / "trainer_state.json").is_file():
        return path
    root = path / CHECKPOINTS
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step-*") if (p / "trainer_state.json").is_file())
    return done[-1] if done else None


def save_checkpoint(model, optimizer, state: LoopState, adapter_path, adapter_config: dict,
                    keep: int = 0) -> Path:
    """Write checkpoints/step-NNNNNN/ (adapter, optimizer state, RNG, loop state) atomically:
    into a temporary folder renamed into place once complete."""
    final = checkpoint_dir(adapter_path, state.step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        save_adapter(model, tmp, adapter_config)
        arrays = {f"optimizer.{k}": v for k, v in tree_flatten(optimizer.state)}
        arrays["rng"] = mx.random.state[0]
        mx.eval(arrays)
        mx.savez(str(tmp / "state.npz"), **arrays)
        write_json(tmp / "trainer_state.json", asdict(state))
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep > 0:
        done = sorted(p for p in final.parent.glob("step-*") if p.is_dir())
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(model, optimizer, path) -> LoopState:
    """Restore adapter weights, optimizer state and RNG from a checkpoint; returns its LoopState.

    The model must already carry LoRA layers of the same shapes (apply_lora with the saved
    settings)."""
    from .lora import adapter_weights

    path = Path(path)
    try:
        state = LoopState(**json.loads((path / "trainer_state.json").read_text()))
        arrays = mx.load(str(path / "state.npz"))
        weights = mx.load(str(path / "adapters.npz"))
    except (OSError, ValueError, TypeError, RuntimeError) as e:
        raise TrainingError(f"cannot read checkpoint {path}: {e}") from None
    expected = adapter_weights(model)
    if set(weights) != set(expected) or any(weights[k].shape != expected[k].shape for k in weights):
        raise TrainingError(f"checkpoint {path} does not match the model's LoRA layers "
                            "(different model, rank, targets or layers)")
    model.load_weights(list(weights.items()), strict=False)
    opt_arrays = {k[len("optimizer."):]: v for k, v in arrays.items() if k.startswith("optimizer.")}
    optimizer.init(model.trainable_parameters())
    have = dict(tree_flatten(optimizer.state))
    if set(have) != set(opt_arrays):
        raise TrainingError(f"checkpoint {path}: optimizer state does not match (different optimizer?)")
    optimizer.state = tree_map_with_path(lambda p, _: opt_arrays[p], optimizer.state)
    hi, lo = (int(x) for x in arrays["rng"].tolist())
    mx.random.seed((hi << 32) | lo)
    mx.eval(model.parameters(), optimizer.state)
    return state


# --------------------------------------------------------------------------- CPU threads

def auto_streams(per_process_batch: int) -> int:
    """Streams to split a micro-batch over: one per core (at most 4) where MLX runs on the
    CPU, one on a GPU (whose own kernels are parallel)."""
    if mx.default_device().type != mx.DeviceType.cpu:
        return 1
    return max(1, min(4, os.cpu_count() or 1, per_process_batch))


_STREAMS: list = []


def cpu_streams(n: int) -> list:
    """``n`` streams on the default device, created once per process and reused (each stream
    owns a thread)."""
    while len(_STREAMS) < n:
        _STREAMS.append(mx.new_stream(mx.default_device()))
    return _STREAMS[:n]


def _openblas():
    import ctypes

    try:
        lib = ctypes.CDLL(None)  # OpenBLAS loaded RTLD_GLOBAL (mlx_text2sql.blas) or preloaded
        return lib if hasattr(lib, "openblas_set_num_threads") else None
    except OSError:
        return None


def openblas_threads() -> int | None:
    lib = _openblas()
    return int(lib.openblas_get_num_threads()) if lib is not None else None


@contextlib.contextmanager
def blas_threads(n: int | None):
    """Run the block with OpenBLAS using ``n`` threads (no-op without OpenBLAS or for None)."""
    lib = _openblas()
    if lib is None or n is None:
        yield
        return
    before = int(lib.openblas_get_num_threads())
    lib.openblas_set_num_threads(int(n))
    try:
        yield
    finally:
        lib.openblas_set_num_threads(before)


# --------------------------------------------------------------------------- the loop

# MLX keeps freed buffers for reuse. Text2SQL batches change shape at every step (prompt lengths
# vary), so on a CPU the cache kept growing until the process ran out of memory (a Spider run
# at 1,024 tokens passed 20 GB by step 30 with a 7 GB working set); capped, it is reused the same.
BUFFER_CACHE_BYTES = 2 << 30


def cap_buffer_cache(limit: int = BUFFER_CACHE_BYTES) -> None:
    """Cap MLX's buffer cache on the CPU backend (GPUs keep MLX's own limit)."""
    if mx.default_device() == mx.cpu:
        mx.set_cache_limit(limit)


@contextlib.contextmanager
def grad_checkpointing(model, enabled: bool):
    """Recompute each block's activations in the backward pass instead of storing them.

    mx.checkpoint wraps the block type's __call__ (MLX modules are called through their type);
    the original is restored when training ends.
    """
    if not enabled:
        yield
        return
    block_type = type(model.layers[0])
    original = block_type.__call__

    def checkpointed(block, *args, **kwargs):
        def inner(params, *args, **kwargs):
            block.update(params)
            return original(block, *args, **kwargs)

        return mx.checkpoint(inner)(block.trainable_parameters(), *args, **kwargs)

    block_type.__call__ = checkpointed
    try:
        yield
    finally:
        block_type.__call__ = original


def _arrays(b) -> tuple:
    return b.arrays() if hasattr(b, "arrays") else (b.inputs, b.index, b.targets, b.weights)


def _setup_packing(model, loss, train_set: TokenizedSet, args: TrainArgs, rank: int):
    """(prefix groups, value_and_grad of the packed loss), or (None, None) when packing would not
    pay (no shared prefixes) or the model's packed loss does not match its plain loss."""
    groups = prefix_groups(train_set.samples)
    shared = [g for g in groups if len(g.members) > 1 and g.prefix_len > 0]
    if not shared:
        return None, None
    packed = make_packed_loss(model, fast=args.fast_ops)
    if packed is None:
        return None, None
    probe = [train_set.samples[i] for i in max(shared, key=lambda g: -g.prefix_len).members[:3]]
    with fast_llama_ops(model, args.fast_ops):
        diff = check_packed_loss(model, loss, packed, probe, args.pad_to)
    if not diff < 1e-3:
        if rank == 0:
            print(f"[train] shared-prefix packing is off: its loss differs from the plain loss by "
                  f"{diff:.2e} on this model", file=sys.stderr)
        return None, None
    return groups, nn.value_and_grad(model, packed)


@dataclass
class TrainResult:
    state: LoopState
    final_loss: float | None
    first_loss: float | None
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)


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
    callbacks = list(callbacks or [])
    adapter_config = dict(adapter_config or {})
    best_metric = next((m for m in metrics if m.name == args.best_metric), None)
    state = start or LoopState()
    fresh = start is None
    lengths = train_set.lengths
    adapter_path = Path(args.adapter_path)

    def emit(hook, *a):
        if rank == 0:
            for cb in callbacks:
                getattr(cb, hook)(*a)

    # --- CPU streams: MLX's elementwise CPU kernels are single-threaded, so one stream leaves
    # cores idle outside matrix products; k streams each take 1/k of the batch (BLAS set to
    # one thread each, so the streams do not fight over the cores).
    value_and_grad = nn.value_and_grad(model, loss)
    cstate = [model.state, optimizer.state, mx.random.state]
    groups = packed_vg = None
    if args.share_prefix and not args.train_on_prompt and getattr(loss, "answer_only_head", False):
        groups, packed_vg = _setup_packing(model, loss, train_set, args, rank)
    # Packed batches keep one stream by default: split over streams, fewer questions share each
    # prefix, and one stream with multi-threaded BLAS measured faster (WikiSQL, 2 cores).
    n_streams = args.streams or (1 if groups is not None else auto_streams(args.batch_size // size))
    n_streams = max(1, min(n_streams, args.batch_size // size))
    streams = [mx.default_stream(mx.default_device())] if n_streams == 1 else cpu_streams(n_streams)

    def grad_of(part):
        return packed_vg(model, *part) if len(part) == 7 else value_and_grad(model, *part)

    def accumulate(parts, acc):
        # parts: one (inputs, index, targets, weights) per stream. Each part's forward and
        # backward is built on its own stream, so MLX runs them on separate threads; summing
        # gradients of summed losses keeps the result that of the whole micro-batch.
        for stream, part in zip(streams, parts):
            with mx.stream(stream):
                (lsum, ntok), grads = grad_of(part)
            if acc is not None:
                grads = tree_map(mx.add, grads, acc[0])
                lsum, ntok = lsum + acc[1], ntok + acc[2]
            acc = (grads, lsum, ntok)
        return acc

    def update(grads, lsum, ntok):
        if size > 1:
            # all_sum(gradient sums) / all_sum(token counts): the combined batch's gradient.
            grads = tree_map(lambda g: g * size, nn.utils.average_gradients(grads))
            both = mx.distributed.all_sum(mx.stack([lsum, ntok]))
            lsum, ntok = both[0], both[1]
        grads = tree_map(lambda g: g / ntok, grads)
        if args.max_grad_norm:
            grads, norm = optim.clip_grad_norm(grads, args.max_grad_norm)
        else:
            norm = mx.sqrt(sum(mx.sum(g * g) for _, g in tree_flatten(grads)))
        optimizer.update(model, grads)
        return lsum / ntok, norm

    if args.compile:
        accumulate = mx.compile(accumulate, inputs=cstate, outputs=cstate)
        update = mx.compile(update, inputs=cstate, outputs=cstate)

    def epoch_order(epoch: int) -> list:
        if groups is not None:
            return packed_epoch(groups, lengths, args.batch_size, args.seed, epoch)
        return epoch_batches(lengths, args.batch_size, args.seed, epoch)

    def next_batch() -> list:
        """This process's share of the next batch, split into one part per stream."""
        nonlocal order
        if state.position >= len(order):
            state.epoch += 1
            state.position = 0
            order = epoch_order(state.epoch)
        batch = order[state.position]
        state.position += 1
        if groups is not None:
            mine = split_pieces(batch, size)[rank] if size > 1 else batch
            return [collate_packed(train_set.samples, p, args.pad_to) for p in split_pieces(mine, len(streams))]
        idx = batch[rank::size]
        return [collate([train_set.samples[i] for i in idx[k::len(streams)]], args.train_on_prompt, args.pad_to)
                for k in range(len(streams))]

    def run_metrics(initial: bool = False) -> dict:
        model.eval()
        out = {}
        with blas_threads(saved_blas_threads):
            for m in metrics:
                if initial and not getattr(m, "initial", True):
                    continue  # e.g. exec_acc: the untrained model's replies say nothing
                tic = time.perf_counter()
                out[m.name] = m(model)
                out[f"{m.name}_seconds"] = round(time.perf_counter() - tic, 3)
        model.train()
        return out

    def save_final_and_checkpoint():
        if rank == 0:
            save_adapter(model, adapter_path, adapter_config)
            ck = save_checkpoint(model, optimizer, state, adapter_path, adapter_config, args.keep_checkpoints)
            emit("on_save", {"step": state.step, "checkpoint": str(ck), "adapter": str(adapter_path)})

    def consider(values: dict) -> bool:
        """Track the best metric; save adapters/best; True when early stopping triggers."""
        if best_metric is None or best_metric.name not in values:
            return False
        v = values[best_metric.name]
        better = state.best_value is None or (
            v > state.best_value if best_metric.higher_is_better else v < state.best_value)
        if better and math.isfinite(v):
            state.best_value, state.best_step, state.bad_evals = v, state.step, 0
            if rank == 0:
                save_adapter(model, adapter_path / "best", {
                    **adapter_config, "best": {"metric": best_metric.name, "value": v, "step": state.step}})
            return False
        state.bad_evals += 1
        return args.early_stop is not None and state.bad_evals >= args.early_stop

    order = epoch_order(state.epoch)
    saved_blas_threads = openblas_threads()
    history: list[dict] = []
    first_loss = last_loss = None
    stopped_early = False
    window = {"loss": 0.0, "steps": 0, "tokens": 0, "loss_tokens": 0, "computed": 0, "seconds": 0.0, "cpu": 0.0}
    model.train()
    with grad_checkpointing(model, args.grad_checkpoint), fast_llama_ops(model, args.fast_ops) as fast, \
            blas_threads(1 if n_streams > 1 else None):
        emit("on_start", {"step": state.step, "iters": args.iters, "examples": len(train_set),
                          "batches_per_epoch": len(order), "processes": size, "fast_ops": fast,
                          "streams": n_streams, "shared_prefix": groups is not None,
                          "answer_only_head": bool(getattr(loss, "answer_only_head", False))})
        if fresh and metrics:
            values = run_metrics(initial=True)
            info = {"type": "eval", "step": 0, **values}
            history.append(info)
            emit("on_eval", info)
            consider(values)
        while state.step < args.iters:
            tic, cpu_tic = time.perf_counter(), time.process_time()
            acc = None
            tokens = loss_tokens = computed = 0
            for _ in range(args.grad_accum):
                parts = next_batch()
                tokens += sum(b.tokens for b in parts)
                loss_tokens += sum(b.loss_tokens for b in parts)
                computed += sum(getattr(b, "computed", b.tokens) for b in parts)
                acc = accumulate([tuple(mx.array(x) for x in _arrays(b)) for b in parts], acc)
            before = model.trainable_parameters()  # references only: kept to undo a bad step
            step_loss, norm = update(*acc)
            mx.eval(cstate, step_loss, norm)
            state.step += 1
            lv, nv = step_loss.item(), norm.item()
            if not (math.isfinite(lv) and math.isfinite(nv)):
                model.update(before)
                if rank == 0:
                    save_adapter(model, adapter_path, adapter_config)
                raise TrainingError(
                    f"the loss became {'NaN' if math.isnan(lv) else lv} at step {state.step} "
                    f"(gradient norm {nv}); {adapter_path} holds the weights after step {state.step - 1}. "
                    "Lower --lr, raise --warmup or keep --max-grad-norm on.")
            if size > 1:
                tokens = int(mx.distributed.all_sum(mx.array(tokens), stream=mx.cpu).item())
                loss_tokens = int(mx.distributed.all_sum(mx.array(loss_tokens), stream=mx.cpu).item())
                computed = int(mx.distributed.all_sum(mx.array(computed), stream=mx.cpu).item())
            dt = time.perf_counter() - tic
            first_loss = lv if first_loss is None else first_loss
            last_loss = lv
            state.tokens += tokens
            state.seconds += dt
            window["loss"] += lv
            window["steps"] += 1
            window["tokens"] += tokens
            window["loss_tokens"] += loss_tokens
            window["computed"] += computed
            window["seconds"] += dt
            window["cpu"] += time.process_time() - cpu_tic
            emit("on_step", state.step)

            if state.step % args.report_every == 0 or state.step == args.iters:
                info = {
                    "type": "train", "step": state.step, "epoch": round(
                        state.epoch + state.position / max(len(order), 1), 4),
                    "loss": window["loss"] / window["steps"],
                    "lr": float(optimizer.learning_rate.item()),
                    "grad_norm": nv,
                    # effective tokens: every example counted whole, as if run alone
                    "tokens_per_second": window["tokens"] / window["seconds"],
                    "computed_tokens_per_second": window["computed"] / window["seconds"],
                    # CPU seconds of this process per step: steadier than wall time on a busy machine
                    "cpu_seconds_per_step": window["cpu"] / window["steps"],
                    "trained_tokens": state.tokens,
                    "loss_tokens": window["loss_tokens"],
                    "peak_memory_gb": mx.get_peak_memory() / 1e9,
                    "seconds": round(state.seconds, 3),
                }
                history.append(info)
                emit("on_report", info)
                window = {k: 0 if k != "loss" else 0.0 for k in window}

            stop = False
            if metrics and (state.step % args.eval_every == 0 or state.step == args.iters):
                values = run_metrics()
                info = {"type": "eval", "step": state.step, **values}
                history.append(info)
                emit("on_eval", info)
                stop = consider(values)

            if state.step % args.save_every == 0 or state.step == args.iters or stop:
                save_final_and_checkpoint()
            if stop:
                stopped_early = True
                break
    result = TrainResult(state=state, final_loss=last_loss, first_loss=first_loss,
                         stopped_early=stopped_early, history=history)
    emit("on_end", {"step": state.step, "stopped_early": stopped_early, "best_value": state.best_value,
                    "best_step": state.best_step, "tokens": state.tokens, "seconds": state.seconds})
    return result
