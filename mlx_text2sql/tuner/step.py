"""One optimizer step: the batches it draws (:class:`BatchFeed`) and the compiled gradient
computation over CPU streams, micro-batches and processes (:class:`TrainStep`).

Gradients are of the summed token loss and divided by the token count of the whole optimizer
step (all micro-batches, all processes), so gradient accumulation and data parallelism give
exactly the gradient of the combined batch. One host sync per step (to check the loss is
finite); reports read accumulated values.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map

from .checkpoints import LoopState
from .data import TokenizedSet, collate, collate_packed, epoch_batches, packed_epoch, prefix_groups, split_pieces
from .fastops import fast_llama_ops
from .loss import check_packed_loss, make_packed_loss
from .runtime import auto_streams, cpu_streams


def _arrays(b) -> tuple:
    return b.arrays() if hasattr(b, "arrays") else (b.inputs, b.index, b.targets, b.weights)


def setup_packing(model, loss, train_set: TokenizedSet, args, rank: int):
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


class BatchFeed:
    """The data order: this process's share of each batch, split into one part per stream.

    The position (epoch, batch within it) lives in the run's LoopState, so a run resumed from a
    checkpoint draws the batches the interrupted run would have drawn next."""

    def __init__(self, train_set: TokenizedSet, args, groups, n_streams: int, state: LoopState,
                 size: int = 1, rank: int = 0):
        self.train_set, self.groups, self.state = train_set, groups, state
        self.batch_size, self.seed = args.batch_size, args.seed
        self.train_on_prompt, self.pad_to = args.train_on_prompt, args.pad_to
        self.n_streams, self.size, self.rank = n_streams, size, rank
        self.order = self.epoch_order(state.epoch)

    def epoch_order(self, epoch: int) -> list:
        lengths = self.train_set.lengths
        if self.groups is not None:
            return packed_epoch(self.groups, lengths, self.batch_size, self.seed, epoch)
        return epoch_batches(lengths, self.batch_size, self.seed, epoch)

    @property
    def epoch(self) -> float:
        """Epochs done, as a fraction."""
        return round(self.state.epoch + self.state.position / max(len(self.order), 1), 4)

    def next(self) -> list:
        """This process's share of the next batch, split into one part per stream."""
        state, samples = self.state, self.train_set.samples
        if state.position >= len(self.order):
            state.epoch += 1
            state.position = 0
            self.order = self.epoch_order(state.epoch)
        batch = self.order[state.position]
        state.position += 1
        if self.groups is not None:
            mine = split_pieces(batch, self.size)[self.rank] if self.size > 1 else batch
            return [collate_packed(samples, p, self.pad_to) for p in split_pieces(mine, self.n_streams)]
        idx = batch[self.rank::self.size]
        return [collate([samples[i] for i in idx[k::self.n_streams]], self.train_on_prompt, self.pad_to)
                for k in range(self.n_streams)]


@dataclass
class StepStats:
    """What one optimizer step did: its loss and gradient norm (before clipping), and the
    tokens of its batches (summed over processes): effective (every example counted whole),
    with loss, and computed (shared prefixes counted once)."""

    loss: float
    grad_norm: float
    tokens: int = 0
    loss_tokens: int = 0
    computed: int = 0

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


def _step_functions(model, optimizer, value_and_grad, packed_vg, streams: list, size: int,
                    max_grad_norm: float):
    """(accumulate, update): the gradient of one micro-batch added to the running sums, and
    the optimizer update from the sums."""

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
        if max_grad_norm:
            grads, norm = optim.clip_grad_norm(grads, max_grad_norm)
        else:
            norm = mx.sqrt(sum(mx.sum(g * g) for _, g in tree_flatten(grads)))
        optimizer.update(model, grads)
        return lsum / ntok, norm

    return accumulate, update


class TrainStep:
    """The optimizer step of a run: plain or shared-prefix (packed) batches, each micro-batch
    split over ``streams`` (CPU threads), ``grad_accum`` micro-batches per step, gradients
    summed over processes; compiled unless ``args.compile`` is off.

    Packed batches keep one stream by default: split over streams, fewer questions share each
    prefix, and one stream with multi-threaded BLAS measured faster (WikiSQL, 2 cores)."""

    def __init__(self, model, optimizer, loss, train_set: TokenizedSet, args, size: int = 1, rank: int = 0):
        self.model, self.size = model, size
        value_and_grad = nn.value_and_grad(model, loss)
        # what the compiled functions read and write besides their arguments
        self.compiled_state = [model.state, optimizer.state, mx.random.state]
        self.groups = packed_vg = None
        if args.share_prefix and not args.train_on_prompt and getattr(loss, "answer_only_head", False):
            self.groups, packed_vg = setup_packing(model, loss, train_set, args, rank)
        n = args.streams or (1 if self.groups is not None else auto_streams(args.batch_size // size))
        n = max(1, min(n, args.batch_size // size))
        self.streams = [mx.default_stream(mx.default_device())] if n == 1 else cpu_streams(n)
        accumulate, update = _step_functions(model, optimizer, value_and_grad, packed_vg, self.streams,
                                             size, args.max_grad_norm)
        if args.compile:
            accumulate = mx.compile(accumulate, inputs=self.compiled_state, outputs=self.compiled_state)
            update = mx.compile(update, inputs=self.compiled_state, outputs=self.compiled_state)
        self.accumulate, self.update = accumulate, update

    def __call__(self, feed: BatchFeed, grad_accum: int) -> StepStats:
        """Draw ``grad_accum`` micro-batches from ``feed`` and apply one update. When the loss
        or the gradient norm is not finite the update is undone and the stats say so (token
        counts are then left at 0)."""
        acc = None
        tokens = loss_tokens = computed = 0
        for _ in range(grad_accum):
            parts = feed.next()
            tokens += sum(b.tokens for b in parts)
            loss_tokens += sum(b.loss_tokens for b in parts)
            computed += sum(getattr(b, "computed", b.tokens) for b in parts)
            acc = self.accumulate([tuple(mx.array(x) for x in _arrays(b)) for b in parts], acc)
        before = self.model.trainable_parameters()  # references only: kept to undo a bad step
        step_loss, norm = self.update(*acc)
        mx.eval(self.compiled_state, step_loss, norm)
        stats = StepStats(step_loss.item(), norm.item())
        if not stats.finite:
            self.model.update(before)
            return stats
        if self.size > 1:
            tokens = int(mx.distributed.all_sum(mx.array(tokens), stream=mx.cpu).item())
            loss_tokens = int(mx.distributed.all_sum(mx.array(loss_tokens), stream=mx.cpu).item())
            computed = int(mx.distributed.all_sum(mx.array(computed), stream=mx.cpu).item())
        stats.tokens, stats.loss_tokens, stats.computed = tokens, loss_tokens, computed
        return stats
