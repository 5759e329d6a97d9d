"""Prefill: prompts into the KV cache, starting from the longest stored prefix.

Every function takes the :class:`~.generator.SQLGenerator` whose model, prefix store, settings
and statistics it uses (read at call time, so a caller may swap ``gen.stats`` or
``gen.store``). A prefix shared by a group of prompts is computed once (:func:`compute_prefix`);
each prompt's remainder is then prefilled in padded blocks of rows of similar length
(:func:`prefill`, :func:`prefill_block`), whose last column gives every row's first token.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from .cache import _Batch, _LayerCache, _Prefix
from .plan import _split_by_length
from .rows import _Active, _Row


def sample(logits: mx.array, sampler) -> mx.array:
    """The sampler's choice from the last column of ``logits`` (B, L, V), as (B,)."""
    logits = logits[:, -1, :]
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return sampler(logprobs)


def compute_prefix(gen, tokens: list[int]) -> _Prefix:
    """The KV cache of ``tokens`` (stored), computed from the longest stored prefix."""
    entry, reused = gen.store.lookup(tokens)
    if entry is not None and reused == len(tokens):
        if len(entry.tokens) == reused:
            return entry
        new = _Prefix(tuple(tokens), [(k[..., :reused, :], v[..., :reused, :]) for k, v in entry.kv])
        gen.store.add(new)
        return new
    batch = _Batch(np.ones((1, reused), dtype=bool), np.array([reused]))
    if entry is not None and reused:
        caches = [_LayerCache(batch, k[..., :reused, :], v[..., :reused, :]) for k, v in entry.kv]
    else:
        caches = [_LayerCache(batch) for _ in range(gen.n_layers)]
    rest = tokens[reused:]
    for s in range(0, len(rest), gen.prefill_step):
        chunk = rest[s: s + gen.prefill_step]
        batch.begin(len(chunk))
        gen.model(mx.array([chunk]), cache=caches)
        batch.end()
        # Only the cache is evaluated: the logits of a prefill are never computed.
        mx.eval([c.state for c in caches])
    gen.stats.computed_prompt_tokens += len(rest)
    new = _Prefix(tuple(tokens), [c.snapshot() for c in caches])
    gen.store.add(new)
    return new


def prefill(gen, rows: list[_Row], sampler) -> _Active:
    """Run ``rows``' prompts through the model; returns them as a batch whose first tokens
    are queued (not yet read)."""
    # 1. Each row starts from a cached prefix; long remainders are prefilled alone.
    starts: list[tuple[_Prefix | None, int]] = []
    for row in rows:
        toks = row.prompt
        if row.group_prefix:
            entry, n = compute_prefix(gen, toks[: row.group_prefix]), row.group_prefix
        else:
            entry, n = gen.store.lookup(toks)
            n = min(n, len(toks) - 1)
        row.cached = n
        if len(toks) - n > gen.block_tokens:
            entry, n = compute_prefix(gen, toks[:-1]), len(toks) - 1
        starts.append((entry, n))

    # 2. Rows of similar remainder length are prefilled together, so that little of a
    # block is padding.
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].prompt) - starts[i][1])
    remainders = [len(rows[i].prompt) - starts[i][1] for i in order]
    active = None
    for lo, hi in _split_by_length(remainders, gen.call_overhead_tokens):
        part = order[lo:hi]
        new = prefill_block(gen, [rows[i] for i in part], [starts[i] for i in part], sampler)
        active = new if active is None else active.extend(new)
    return active


def _block_caches(starts: list[tuple[_Prefix | None, int]], n_layers: int) -> tuple[_Batch, list[_LayerCache]]:
    """One cache for rows starting from these prefixes: right-aligned in P columns (left
    padding before), P the longest prefix."""
    lengths = np.array([n for _, n in starts])
    P = int(lengths.max())
    batch = _Batch(np.arange(P)[None, :] >= (P - lengths)[:, None], lengths)
    if P == 0:
        return batch, [_LayerCache(batch) for _ in range(n_layers)]
    caches = []
    ref = next(e for e, n in starts if n)
    for layer in range(n_layers):
        ks, vs = [], []
        for entry, n in starts:
            if n:
                k, v = (a[..., :n, :] for a in entry.kv[layer])
                if n < P:
                    spec = [(0, 0), (0, 0), (P - n, 0), (0, 0)]
                    k, v = mx.pad(k, spec), mx.pad(v, spec)
            else:  # nothing cached for this row: all P columns are padding
                rk, rv = ref.kv[layer]
                k = mx.zeros((1, rk.shape[1], P, rk.shape[3]), rk.dtype)
                v = mx.zeros((1, rv.shape[1], P, rv.shape[3]), rv.dtype)
            ks.append(k)
            vs.append(v)
        caches.append(_LayerCache(batch, mx.concatenate(ks, axis=0), mx.concatenate(vs, axis=0)))
    return batch, caches


def prefill_block(gen, rows: list[_Row], starts: list[tuple[_Prefix | None, int]], sampler) -> _Active:
    """Rows starting from cached prefixes, their remainders prefilled as one block."""
    batch, caches = _block_caches(starts, gen.n_layers)

    # The remainders as one left-padded block; all but its last column only fill the
    # cache, the last column gives every row's first logits.
    blocks = [row.prompt[n:] for row, (_, n) in zip(rows, starts)]
    gen.stats.computed_prompt_tokens += sum(len(b) for b in blocks)
    W = max(len(b) for b in blocks)
    pad = np.array([W - len(b) for b in blocks])
    block = mx.array([[0] * (W - len(b)) + b for b in blocks])
    if gen._split is not None:
        # One pass over the block; only the last column (every row's last prompt token,
        # always real) goes through the output projection.
        backbone, head = gen._split
        batch.begin(W, pad)
        logits = head(backbone(block, cache=caches)[:, -1:, :])
        batch.end()
        return _first(rows, batch, caches, logits, sampler)
    if W > 1:
        batch.begin(W - 1, pad)
        gen.model(block[:, :-1], cache=caches)
        batch.end()
        mx.eval([c.state for c in caches])
    batch.begin(1)  # every row's last prompt token is real
    logits = gen.model(block[:, -1:], cache=caches)
    batch.end()
    return _first(rows, batch, caches, logits, sampler)


def _first(rows: list[_Row], batch, caches, logits: mx.array, sampler) -> _Active:
    """The batch of prefilled rows, their first tokens queued, with the logits behind them
    (a constrained row's decoder reads them; the decoding loop drops them once it has the
    tokens)."""
    active = _Active(batch, caches, list(rows), sample(logits, sampler))
    active.first_logits = logits[:, -1, :]
    return active
