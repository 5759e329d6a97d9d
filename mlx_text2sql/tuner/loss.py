"""The loss of a batch, computed only where there is loss.

The model body gives hidden states (B, L, D); the answer positions (N of them, N << B*L when
the loss is on the SQL only) are gathered to (N, D) and only those go through ``lm_head`` (or
the tied embedding's ``as_linear``), so the (B*L, V) logits and their softmax are never built.
Padding positions are never projected.

Shared-prefix packing (:func:`make_packed_loss`) runs a group's common prompt prefix once and
each member's remainder against it, with the same loss as the examples unpacked.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from .data import collate, collate_packed, prefix_groups
from .fastops import fast_cross_entropy


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
