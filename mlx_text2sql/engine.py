"""Batched SQL generation with a shared-prefix KV cache and prompt-lookup drafts.

:class:`SQLGenerator` turns many chat prompts into replies at once. Text2SQL prompts are long
(system text + schema + sample rows) and replies short, many questions ask about the same
schema, and the SQL copies names and values from the prompt. So:

1. **Shared prefixes are computed once.** Prompts are sorted by their tokens, so prompts over the
   same schema sit next to each other; the longest prefix a group shares (system + schema) is
   run through the model once and its keys/values reused by every question of the group. An
   LRU store keeps these prefix caches across calls, so interactive use over one schema only
   pays for each new question (a stored prefix is reused up to the longest common part).
2. **Decoding is batched, continuously.** Rows are decoded together; each keeps its own RoPE
   positions, and an attention mask hides the other rows' padding and holes, so a row's tokens
   do not depend on which rows share its batch. Finished rows leave at once, and queued
   prompts are prefilled into the freed rows (when a quarter of the batch is free).
3. **Prompt remainders (the questions) are prefilled in padded blocks**, rows of similar
   length together; long remainders (a schema nobody else shares) one prompt at a time.
4. **Greedy decoding verifies guesses.** Each step feeds every row its next token plus up to
   ``draft_tokens`` tokens guessed by looking the reply's last tokens up in the prompt
   (:class:`_Lookup`), and keeps the guesses the model agrees with: several tokens per step
   for the price of one on a memory-bound CPU, with greedy decoding's exact output.
5. **Decode attention reads each cached key once per key/value head** (:func:`decode_attention`):
   at 16 rows x 450 cached columns attention is half a CPU decode step, and MLX's generic
   ``scaled_dot_product_attention`` is ~1.4x slower there. Prefill blocks run the backbone over
   all their columns and project only the last one onto the vocabulary; greedy steps take the
   argmax of the logits without normalising them.
6. **On MLX's CPU backend, exponentials are computed by NumPy** (:func:`host_attention`,
   :func:`host_swiglu`): MLX's CPU ``exp`` is scalar, ~25x slower than NumPy's vectorised one,
   and the attention softmaxes and SwiGLU sigmoids of a prefill are ~half of its time. The
   matrix products stay in MLX; each layer syncs with the host twice. Only while this engine
   generates: mlx_lm's own calls in the same process are untouched.

Greedy decoding gives the tokens of unbatched greedy decoding (``batch_size=1``, or a plain
``mlx_lm.generate`` loop) up to float rounding between matrix-product shapes; tests check the
tokens are identical on small models, and ``benchmarks/generate_throughput.py`` on the real one.

Only models whose cache is a plain ``KVCache`` per layer (llama, mistral, qwen2, phi3, ...)
take the batched path; others (sliding-window or recurrent layers) are generated one prompt at
a time through mlx_lm's own ``generate_step``, with the same stopping rules.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, Union

import mlx.core as mx
import numpy as np

from .prompts import extract_sql

Messages = list  # list[dict[str, str]]
Prompt = Union[Messages, str, Sequence[int]]
StreamCallback = Callable[[int, str], None]


@dataclass
class Result:
    """One prompt's outcome.

    text:            the reply, cut before the EOS token / first stop string.
    sql:             ``prompts.extract_sql(text)``; "" when the reply holds no query.
    n_prompt_tokens: prompt length in tokens.
    n_tokens:        tokens generated (the EOS token included when one was emitted).
    seconds:         wall time from when the prompt entered the batch (its prefill began) to
                     its last token: its latency, not counting time queued behind others.
    finish_reason:   "stop" (EOS or a stop string) or "length" (hit ``max_tokens``).
    tokens:          the generated token ids (EOS included).
    n_cached_tokens: prompt tokens covered by a shared prefix (computed once for every prompt
                     that shares it, or found in the store from an earlier call).
    """

    text: str
    sql: str
    n_prompt_tokens: int
    n_tokens: int
    seconds: float
    finish_reason: str = "stop"
    n_cached_tokens: int = 0
    tokens: list[int] = field(default_factory=list)


@dataclass
class Stats:
    """Where the time of :meth:`SQLGenerator.generate` calls went (cumulative)."""

    prompts: int = 0
    prompt_tokens: int = 0
    computed_prompt_tokens: int = 0  # prompt tokens run through the model (the rest came cached)
    prefill_seconds: float = 0.0
    decode_steps: int = 0
    decode_row_steps: int = 0  # sum over steps of the rows in the batch
    decode_seconds: float = 0.0
    generated_tokens: int = 0
    drafted_tokens: int = 0  # prompt-lookup guesses fed to the model
    accepted_tokens: int = 0  # guesses that were right (tokens gained without a step)

    def summary(self) -> str:
        rows = self.decode_row_steps / max(1, self.decode_steps)
        return (f"{self.prompts} prompts; prefill {self.prefill_seconds:.1f} s for "
                f"{self.computed_prompt_tokens}/{self.prompt_tokens} prompt tokens computed; "
                f"decode {self.decode_seconds:.1f} s for {self.decode_steps} steps "
                f"({rows:.1f} rows/step, {1000 * self.decode_seconds / max(1, self.decode_steps):.0f} ms/step), "
                f"{self.generated_tokens} tokens"
                + (f"; drafts: {self.accepted_tokens}/{self.drafted_tokens} accepted" if self.drafted_tokens else ""))


# --------------------------------------------------------------------------- KV cache

class _Batch:
    """Bookkeeping shared by every layer's cache of one batch.

    The key/value columns of row ``b`` may contain holes (left padding, padding between a
    cached prefix and the rest of the prompt); ``valid[b, c]`` says whether column ``c`` holds
    a real token. ``positions[b]`` is the RoPE position of row ``b``'s next real token.
    """

    def __init__(self, valid: np.ndarray, positions: np.ndarray):
        self.valid = valid  # (B, T) bool, host side: the mask is rebuilt from it per call
        self.positions = np.asarray(positions, dtype=np.int64)  # (B,)
        self.width = valid.shape[1]  # columns written so far
        self.holes = not bool(valid.all())
        self._offset: Any = None
        self._mask: Any = None
        self._n = 0
        self._block_start = 0
        self._block_positions = self.positions

    @property
    def size(self) -> int:
        return self.valid.shape[0]

    def begin(self, n: int, pad: np.ndarray | None = None, lengths: np.ndarray | None = None) -> None:
        """Announce a block of ``n`` columns: ``pad[b]`` leading columns of row b are padding
        (left-padded prompt remainders), or only the first ``lengths[b]`` are real
        (right-padded draft blocks)."""
        B = self.size
        block_valid = np.ones((B, n), dtype=bool)
        self._block_start, self._block_positions = self.width, self.positions
        if lengths is not None and (lengths < n).any():
            block_valid[np.arange(n)[None, :] >= lengths[:, None]] = False
            self.holes = True
            starts = self.positions
            pad = n - lengths  # counted as padding for the position update below
        elif pad is not None and pad.any():
            block_valid[np.arange(n)[None, :] < pad[:, None]] = False
            self.holes = True
            starts = self.positions - pad  # the padding gets (ignored) positions before the row's
        else:
            pad = np.zeros(B, dtype=np.int64)
            starts = self.positions
        self.valid = np.concatenate([self.valid, block_valid], axis=1)
        # RoPE: an int offset is the fast path (and what unbatched generation uses).
        if B == 1 or not (starts != starts[0]).any():
            self._offset = int(starts[0])
        else:
            self._offset = mx.array(starts.astype(np.int32))
        self._mask = self._make_mask(n)
        self._n = n
        self.positions = self.positions + (n - pad)

    def end(self) -> None:
        self.width += self._n
        self._n = 0

    def keep_block_prefix(self, kept: np.ndarray) -> None:
        """After a draft block: row b keeps only its first ``kept[b]`` block columns (the fed
        token and the accepted drafts); the rest become holes, and positions follow."""
        start = self._block_start
        cols = np.arange(self.width - start)[None, :]
        self.valid[:, start:] &= cols < kept[:, None]
        self.positions = self._block_positions + kept
        self.holes = not bool(self.valid.all())

    def _make_mask(self, n: int):
        T = self.width + n
        if not self.holes:
            return None if n == 1 else "causal"
        valid = self.valid[:, :T]
        if n == 1:
            return mx.array(valid[:, None, None, :])  # (B, 1, 1, T); the new column is valid
        q = np.arange(self.width, T)[:, None]  # (n, 1) query columns
        k = np.arange(T)[None, :]  # (1, T) key columns
        # A padding query may see only itself: every softmax row keeps one finite entry, so no
        # NaN reaches the (masked) values the real tokens read.
        allowed = (k <= q)[None] & (valid[:, None, :] | (k == q)[None])  # (B, n, T)
        return mx.array(allowed[:, None])

    def filter(self, keep: np.ndarray) -> int:
        """Keep rows ``keep``; returns how many leading columns became padding everywhere."""
        self.valid = self.valid[keep]
        self.positions = self.positions[keep]
        any_valid = self.valid.any(axis=0)
        drop = int(np.argmax(any_valid)) if any_valid.any() else 0
        if drop:
            self.valid = self.valid[:, drop:]
            self.width -= drop
        self.holes = not bool(self.valid.all())
        return drop

    def extend(self, other: "_Batch") -> tuple[int, int]:
        """Append ``other``'s rows, right-aligning both; returns the columns of left padding
        added to (self, other)."""
        W = max(self.width, other.width)
        pads = (W - self.width, W - other.width)
        parts = [np.pad(b.valid, ((0, 0), (p, 0))) for b, p in zip((self, other), pads)]
        self.valid = np.concatenate(parts, axis=0)
        self.positions = np.concatenate([self.positions, other.positions])
        self.width = W
        self.holes = not bool(self.valid.all())
        return pads


class _LayerCache:
    """The per-layer cache object mlx_lm's attention layers call (``offset``,
    ``update_and_fetch``, ``make_mask``), writing into one preallocated buffer per batch."""

    step = 128  # columns added whenever the buffer is full

    def __init__(self, batch: _Batch, keys: mx.array | None = None, values: mx.array | None = None):
        self.batch = batch
        self.keys = keys  # (B, H, capacity, D): columns [0, batch.width) are written
        self.values = values

    @property
    def offset(self):
        return self.batch._offset

    def make_mask(self, N: int, return_array: bool = False, window_size: int | None = None, **_):
        if window_size is not None:
            raise NotImplementedError("sliding-window attention is generated unbatched")
        mask = self.batch._mask
        if return_array and isinstance(mask, str):
            T = self.batch.width + N
            return mx.array(np.tril(np.ones((N, T), dtype=bool), k=T - N))
        return mask

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        start = self.batch.width
        end = start + keys.shape[2]
        if self.keys is None or end > self.keys.shape[2]:
            have = 0 if self.keys is None else start
            grow = (end - have + self.step - 1) // self.step * self.step
            B, H, _, Dk = keys.shape
            new_k = mx.zeros((B, H, grow, Dk), keys.dtype)
            new_v = mx.zeros((B, H, grow, values.shape[3]), values.dtype)
            if self.keys is None:
                self.keys, self.values = new_k, new_v
            else:
                self.keys = mx.concatenate([self.keys[..., :start, :], new_k], axis=2)
                self.values = mx.concatenate([self.values[..., :start, :], new_v], axis=2)
        # Written in place (the buffer has one owner), as mlx_lm's KVCache does.
        self.keys[..., start:end, :] = keys
        self.values[..., start:end, :] = values
        return self.keys[..., :end, :], self.values[..., :end, :]

    def filter(self, keep: mx.array, drop: int) -> None:
        if self.keys is not None:
            self.keys = self.keys[keep, :, drop:, :]
            self.values = self.values[keep, :, drop:, :]

    def extend(self, other: "_LayerCache", pads: tuple[int, int], width: int) -> None:
        """Append ``other``'s rows; ``pads`` as returned by :meth:`_Batch.extend` (called
        after it, so ``width`` is the merged width). Leaves room for ``step`` more columns."""
        parts_k, parts_v = [], []
        for c, p in zip((self, other), pads):
            old = width - p  # columns written in c
            spec = [(0, 0), (0, 0), (p, self.step), (0, 0)]
            parts_k.append(mx.pad(c.keys[..., :old, :], spec))
            parts_v.append(mx.pad(c.values[..., :old, :], spec))
        self.keys = mx.concatenate(parts_k, axis=0)
        self.values = mx.concatenate(parts_v, axis=0)

    def snapshot(self, row: int = 0) -> tuple[mx.array, mx.array]:
        """(keys, values) of row ``row``'s written columns, shape (1, H, T, D)."""
        T = self.batch.width
        return self.keys[row: row + 1, :, :T, :], self.values[row: row + 1, :, :T, :]

    @property
    def state(self):
        return self.keys, self.values


# --------------------------------------------------------------------------- decode attention

DECODE_ATTENTION_MAX_QUERIES = 8  # queries per row up to which :func:`decode_attention` is used


def decode_attention(queries: mx.array, keys: mx.array, values: mx.array, scale: float, mask) -> mx.array:
    """Scaled dot-product attention for a few queries per row (decode steps, draft blocks),
    as two batched matrix products over the grouped-query layout.

    queries (B, H, L, D); keys, values (B, Hkv, T, D) with H a multiple of Hkv; mask None,
    "causal" (the queries are the last L of the T columns) or a boolean array broadcastable
    to (B, 1, L, T). The query heads that share a key/value head are stacked into one matrix,
    so each cached key and value is read once per step, not once per query head. On MLX's
    CPU backend this is ~1.4x faster than ``mx.fast.scaled_dot_product_attention`` at 16 rows
    x 450 cached columns (SmolLM2-135M: 9 query heads over 3 key/value heads), where attention
    is half of a decode step. Same numbers up to float rounding (softmax in float32)."""
    B, H, L, D = queries.shape
    kvh, T = keys.shape[1], keys.shape[2]
    rep = H // kvh
    q = (queries * scale).reshape(B, kvh, rep * L, D)
    s = (q @ keys.swapaxes(-1, -2)).reshape(B, kvh, rep, L, T)
    if isinstance(mask, str):
        allowed = mx.arange(T)[None, :] <= mx.arange(T - L, T)[:, None]
        s = mx.where(allowed, s, -mx.inf)
    elif mask is not None:
        mask = mask.reshape(mask.shape[0] if mask.ndim == 4 else 1, 1, 1, L, T)
        if mask.dtype == mx.bool_:
            s = mx.where(mask, s, -mx.inf)
        else:  # an additive mask
            s = s + mask
    p = mx.softmax(s, axis=-1, precise=True).reshape(B, kvh, rep * L, T)
    return (p @ values.astype(p.dtype)).astype(queries.dtype).reshape(B, H, L, D)


def host_attention(queries: mx.array, keys: mx.array, values: mx.array, scale: float, mask) -> mx.array:
    """:func:`decode_attention` with the softmax (mask, max, exponentials, sums) computed by
    NumPy on the host, for any number of queries. For MLX's CPU backend only: its ``exp`` is
    scalar (3.8 M exponentials in ~37 ms, NumPy's vectorised one ~1.5 ms), and the softmax of
    a 324-token prefill is ~1/3 of its time. The score and value products stay in MLX; the
    scores are evaluated here (a host sync per layer)."""
    B, H, L, D = queries.shape
    kvh, T = keys.shape[1], keys.shape[2]
    rep = H // kvh
    q = (queries * scale).reshape(B, kvh, rep * L, D)
    s = (q @ keys.swapaxes(-1, -2)).astype(mx.float32).reshape(B, kvh, rep, L, T)
    a = np.asarray(s)  # a view of MLX's buffer: never written to
    if isinstance(mask, str):
        w = np.where(np.tri(L, T, T - L, dtype=bool), a, -np.inf)
    elif mask is not None:
        if mask.dtype != mx.bool_ and mask.dtype != mx.float32:
            mask = mask.astype(mx.float32)
        m = np.asarray(mask)
        m = m.reshape(m.shape[0] if m.ndim == 4 else 1, 1, 1, L, T)
        w = np.where(m, a, -np.inf) if m.dtype == np.bool_ else a + m
    else:
        w = a.copy()
    with np.errstate(invalid="ignore", divide="ignore"):  # a fully masked row: NaN, as in MLX
        w -= w.max(axis=-1, keepdims=True)
        np.exp(w, out=w)
        w /= w.sum(axis=-1, keepdims=True)
    p = mx.array(w.reshape(B, kvh, rep * L, T))
    return (p @ values.astype(p.dtype)).astype(queries.dtype).reshape(B, H, L, D)


def host_swiglu(gate: mx.array, x: mx.array) -> mx.array:
    """``silu(gate) * x`` (mlx_lm's ``swiglu``) with the sigmoid's exponentials computed by
    NumPy (see :func:`host_attention`); float32 arrays of one shape."""
    g = np.asarray(gate)
    with np.errstate(over="ignore"):
        out = np.exp(-g)
    out += 1.0
    np.divide(g, out, out=out)
    out *= np.asarray(x)
    return mx.array(out)


class _HostMath:
    """Whether :func:`host_attention` / :func:`host_swiglu` are in use: only while a
    :class:`SQLGenerator` that enabled them is generating (so mlx_lm's own generation in the
    same process is untouched)."""

    active = False


_HOST_MATH = _HostMath()


def _install_decode_attention(model) -> bool:
    """Route the attention of ``model``'s layers through :func:`decode_attention` when they
    are called with this engine's caches and few queries. mlx_lm's attention layers call
    their module's ``scaled_dot_product_attention``; that name is wrapped once per module, and
    the wrapper hands every other call (other caches, quantized caches, attention sinks,
    prefill blocks) to the original unchanged, so mlx_lm's own generation in the same process
    is not affected. Returns whether the model's module could be wrapped."""
    import sys

    module = sys.modules.get(type(model).__module__)
    original = getattr(module, "scaled_dot_product_attention", None)
    if original is None or not callable(original):
        return False
    if getattr(original, "_mlx_text2sql_wrapped", False):
        return True

    def scaled_dot_product_attention(queries, keys, values, cache, scale, mask, sinks=None, **kw):
        if (isinstance(cache, _LayerCache) and sinks is None and not kw
                and queries.shape[1] % keys.shape[1] == 0):
            if _HOST_MATH.active:
                return host_attention(queries, keys, values, scale, mask)
            if queries.shape[2] <= DECODE_ATTENTION_MAX_QUERIES:
                return decode_attention(queries, keys, values, scale, mask)
        if sinks is not None:
            kw["sinks"] = sinks
        return original(queries, keys, values, cache=cache, scale=scale, mask=mask, **kw)

    scaled_dot_product_attention._mlx_text2sql_wrapped = True
    scaled_dot_product_attention.__wrapped__ = original
    setattr(module, "scaled_dot_product_attention", scaled_dot_product_attention)

    swiglu = getattr(module, "swiglu", None)
    if callable(swiglu) and not getattr(swiglu, "_mlx_text2sql_wrapped", False):
        def engine_swiglu(gate, x):
            if _HOST_MATH.active and gate.dtype == mx.float32 and x.dtype == mx.float32 and gate.shape == x.shape:
                return host_swiglu(gate, x)
            return swiglu(gate, x)

        engine_swiglu._mlx_text2sql_wrapped = True
        engine_swiglu.__wrapped__ = swiglu
        setattr(module, "swiglu", engine_swiglu)
    return True


# Model classes whose ``__call__`` is exactly "backbone, then the (tied or separate) output
# projection", so a prefill block can run the backbone over all its columns and project only
# the last one.
_PLAIN_HEAD_MODULES = {"mlx_lm.models.llama", "mlx_lm.models.qwen2", "mlx_lm.models.qwen3"}


def _backbone_and_head(model):
    """(backbone, head) of a model of :data:`_PLAIN_HEAD_MODULES`, else None."""
    if type(model).__module__ not in _PLAIN_HEAD_MODULES:
        return None
    inner = getattr(model, "model", None)
    args = getattr(model, "args", None)
    if inner is None or args is None:
        return None
    if getattr(args, "tie_word_embeddings", False):
        embed = getattr(inner, "embed_tokens", None)
        return (inner, embed.as_linear) if embed is not None else None
    head = getattr(model, "lm_head", None)
    return (inner, head) if head is not None else None


def _supports_batching(model) -> bool:
    from mlx_lm.models.cache import KVCache, make_prompt_cache

    try:
        caches = make_prompt_cache(model)
    except Exception:
        return False
    return bool(caches) and all(type(c) is KVCache for c in caches)


# --------------------------------------------------------------------------- prefix store

@dataclass
class _Prefix:
    tokens: tuple[int, ...]
    kv: list[tuple[mx.array, mx.array]]  # per layer, each (1, H, len(tokens), D)

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.kv)


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.nonzero(np.asarray(a[:n]) != np.asarray(b[:n]))[0]
    return int(diff[0]) if len(diff) else n


class PrefixStore:
    """An LRU of prompt-prefix KV caches, bounded in bytes.

    ``lookup`` returns the entry sharing the longest common prefix with a token sequence; a
    stored prefix is reusable up to that length (keys/values past it are simply not read).
    """

    def __init__(self, max_bytes: int, keep: int = 4):
        self.max_bytes = max_bytes
        # The newest few entries survive any byte budget: within one call they are the
        # prefixes of the group being decoded.
        self.keep = keep
        self.entries: OrderedDict[tuple[int, ...], _Prefix] = OrderedDict()
        self.nbytes = 0

    def lookup(self, tokens: Sequence[int]) -> tuple[_Prefix | None, int]:
        best, best_len = None, 0
        for entry in self.entries.values():
            n = _lcp(entry.tokens, tokens)
            if n > best_len:
                best, best_len = entry, n
        if best is not None:
            self.entries.move_to_end(best.tokens)
        return best, best_len

    def add(self, entry: _Prefix) -> None:
        if not entry.tokens:
            return
        old = self.entries.pop(entry.tokens, None)
        if old is not None:
            self.nbytes -= old.nbytes
        self.entries[entry.tokens] = entry
        self.nbytes += entry.nbytes
        while self.nbytes > self.max_bytes and len(self.entries) > self.keep:
            _, evicted = self.entries.popitem(last=False)
            self.nbytes -= evicted.nbytes

    def clear(self) -> None:
        self.entries.clear()
        self.nbytes = 0


# --------------------------------------------------------------------------- per-row state

class _Lookup:
    """Prompt-lookup drafts: the tokens that followed the latest earlier occurrence of the
    sequence's last ``n`` tokens (longest ``n`` first, up to ``n_max``), in the prompt or the
    reply so far. SQL copies table names, column names and values from the schema and the
    question, so these guesses are often right, and verifying them costs one model call."""

    def __init__(self, tokens: Sequence[int], n_max: int = 3):
        self.tokens: list[int] = []
        self.n_max = n_max
        self.latest: list[dict] = [{} for _ in range(n_max + 1)]  # n -> {n-gram: end of latest occurrence}
        self.match: list[int | None] = [None] * (n_max + 1)  # n -> end of the previous occurrence of the suffix
        for t in tokens:
            self.push(t)

    def push(self, token: int) -> None:
        self.tokens.append(token)
        end = len(self.tokens)
        for n in range(1, self.n_max + 1):
            if end < n:
                self.match[n] = None
                continue
            gram = tuple(self.tokens[end - n:])
            self.match[n] = self.latest[n].get(gram)
            self.latest[n][gram] = end

    def draft(self, k: int) -> list[int]:
        """Up to ``k`` guessed next tokens; a match on the last token alone is weak evidence,
        so it proposes one token only (measured on WikiSQL: nearly the same tokens per step
        for a third fewer wasted guesses)."""
        if k <= 0:
            return []
        for n in range(self.n_max, 0, -1):
            e = self.match[n]
            if e is not None:
                return self.tokens[e: e + (k if n > 1 else 1)]
        return []


class _Row:
    """Decoding state of one prompt: detokenized text, stop-string search, streaming."""

    def __init__(self, index: int, tokens: list[int], detokenizer, eos_ids: set[int],
                 stop: list[str], max_tokens: int, callback: StreamCallback | None):
        self.index = index
        self.prompt = tokens
        self.detok = detokenizer
        self.eos_ids = eos_ids
        self.stop = stop
        self.holdback = max((len(s) for s in stop), default=1) - 1
        self.max_tokens = max_tokens
        self.callback = callback
        self.generated: list[int] = []
        self.text = ""
        self.emitted = 0
        self.finish_reason: str | None = None
        self.cached = 0
        self.group_prefix = 0
        self.t_start = 0.0
        self.t_end = 0.0
        self.lookup: _Lookup | None = None  # set for speculative decoding

    def add(self, token: int) -> bool:
        """Take one generated token; returns True when the row is finished."""
        self.generated.append(token)
        if self.lookup is not None:
            self.lookup.push(token)
        if token in self.eos_ids:
            self.finish_reason = "stop"
        else:
            self.detok.add_token(token)
            self.text += self.detok.last_segment
            if self._cut_at_stop():
                self.finish_reason = "stop"
            elif len(self.generated) >= self.max_tokens:
                self.finish_reason = "length"
        if self.finish_reason is not None:
            self.detok.finalize()
            self.text += self.detok.last_segment
            self._cut_at_stop()
            self._emit(final=True)
            return True
        self._emit(final=False)
        return False

    def _cut_at_stop(self) -> bool:
        hits = [self.text.find(s) for s in self.stop if s]
        hits = [h for h in hits if h >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return True
        return False

    def _emit(self, final: bool) -> None:
        if self.callback is None:
            return
        # Hold back text that could be the start of a stop string until it is decided.
        upto = len(self.text) if final else max(self.emitted, len(self.text) - self.holdback)
        if upto > self.emitted:
            self.callback(self.index, self.text[self.emitted: upto])
            self.emitted = upto


def _split_by_length(lengths: Sequence[int], overhead: float) -> list[tuple[int, int]]:
    """Split ascending ``lengths`` into contiguous runs ``[lo, hi)`` minimising the padded
    block work plus a fixed cost per model call: sum over runs of
    ``overhead + (hi - lo) * lengths[hi - 1]`` (in tokens). Dynamic programming, O(n^2)."""
    n = len(lengths)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for hi in range(1, n + 1):
        for lo in range(hi):
            # a block of width 1 is one model call; wider ones take two (see _prefill_block)
            calls = 1 if lengths[hi - 1] == 1 else 2
            cost = best[lo] + calls * overhead + (hi - lo) * lengths[hi - 1]
            if cost < best[hi]:
                best[hi], cut[hi] = cost, lo
    runs = []
    hi = n
    while hi > 0:
        runs.append((cut[hi], hi))
        hi = cut[hi]
    return runs[::-1]


class _Active:
    """The rows being decoded together: their cache, and their next tokens (queued)."""

    def __init__(self, batch: _Batch, caches: list[_LayerCache], rows: list[_Row], y: mx.array):
        self.batch = batch
        self.caches = caches
        self.rows = rows
        self.y = y  # (B,) the token each row takes next, not yet added to the rows

    @property
    def size(self) -> int:
        return len(self.rows)

    def filter(self, keep: list[int]) -> "_Active":
        idx = np.array(keep)
        drop = self.batch.filter(idx)
        keep_mx = mx.array(idx.astype(np.int32))
        for c in self.caches:
            c.filter(keep_mx, drop)
        self.y = self.y[keep_mx]
        self.rows = [self.rows[j] for j in keep]
        return self

    def extend(self, other: "_Active") -> "_Active":
        pads = self.batch.extend(other.batch)
        for c, o in zip(self.caches, other.caches):
            c.extend(o, pads, self.batch.width)
        self.y = mx.concatenate([self.y, other.y])
        self.rows += other.rows
        return self


# --------------------------------------------------------------------------- generator

class SQLGenerator:
    """Batched generation for a :class:`~mlx_text2sql.models.load.LoadedModel`.

    ``prefix_cache_mb`` bounds the shared-prefix store kept between calls (0: prefixes are
    shared within a call only);
    ``block_tokens`` is the longest prompt remainder prefilled as a padded batch block (longer
    ones are prefilled one prompt at a time); ``min_shared`` is the fewest tokens beyond the
    prefix common to all prompts that make a group worth caching separately;
    ``call_overhead_tokens`` is what one model call costs beyond its tokens (reading every
    weight once), in tokens of prefill: it decides how finely remainders of different lengths
    are split into separately prefilled blocks; ``draft_tokens`` is how many prompt-lookup
    guesses greedy decoding verifies per row and step (0: one token per step, the next step
    queued while the host reads the last), and ``draft_budget`` caps the tokens a step feeds
    (rows x (1 + guesses)): on a CPU a wide step stops being free once the batch is large
    (measured on SmolLM2-135M: 5 tokens cost 1.7x one token for 1 row, 2.6x for 16 rows);
    ``host_math`` computes attention softmaxes and SwiGLU activations with NumPy
    (:func:`host_attention`, :func:`host_swiglu`): None (default) turns it on for MLX's CPU
    backend, where it makes generation ~1.4x faster, unless ``MLX_TEXT2SQL_NO_HOST_MATH=1``.
    """

    def __init__(self, loaded, *, prefix_cache_mb: float = 512, block_tokens: int = 64,
                 min_shared: int = 16, prefill_step: int = 512, call_overhead_tokens: float = 12,
                 draft_tokens: int = 4, draft_budget: int = 16, host_math: bool | None = None):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.eos_ids = set(int(t) for t in loaded.eos_token_ids)
        self.stop = [s for s in (loaded.stop or []) if s]
        self.store = PrefixStore(int(prefix_cache_mb * 2**20))
        self.block_tokens = max(1, block_tokens)
        self.min_shared = min_shared
        self.prefill_step = prefill_step
        self.call_overhead_tokens = call_overhead_tokens
        self.draft_tokens = max(0, draft_tokens)
        self.draft_budget = max(1, draft_budget)
        self.batched = _supports_batching(self.model)
        self.fast_attention = self.batched and _install_decode_attention(self.model)
        # None: on when the default device is the CPU, unless MLX_TEXT2SQL_NO_HOST_MATH=1.
        self.host_math = host_math
        self._split = _backbone_and_head(self.model)
        self.n_layers = len(self.model.layers)
        self.stats = Stats()

    def uses_host_math(self) -> bool:
        """Whether this generator's attention softmax and SwiGLU run on NumPy
        (:func:`host_attention`): ``host_math`` if given, else on MLX's CPU backend unless
        the environment sets ``MLX_TEXT2SQL_NO_HOST_MATH=1``. Needs the engine's attention
        wrapper (batched llama-like models)."""
        if not self.fast_attention:
            return False
        if self.host_math is not None:
            return bool(self.host_math)
        if os.environ.get("MLX_TEXT2SQL_NO_HOST_MATH", "").strip() not in ("", "0"):
            return False
        return mx.default_device() == mx.cpu

    # ----------------------------------------------------------------- prompts

    def prompt_text(self, messages: Messages) -> str:
        """The chat template's rendering of ``messages`` with the generation prompt appended."""
        return self.loaded.apply_chat_template(list(messages), add_generation_prompt=True)

    def prompt_tokens(self, prompt: Prompt) -> list[int]:
        """Token ids for a prompt: chat messages are rendered with the model's chat template
        (generation prompt appended); text is encoded as training encodes prompts
        (``tuner.data.Encoder.encode_prompt``, mlx_lm's rule): the tokenizer adds its special
        tokens (BOS) unless the text already starts with the BOS. A list of ints is taken as
        token ids."""
        if isinstance(prompt, str):
            text = prompt
        else:
            prompt = list(prompt)
            if prompt and not isinstance(prompt[0], dict):
                return [int(t) for t in prompt]
            text = self.prompt_text(prompt)
        bos = getattr(getattr(self.tokenizer, "_tokenizer", self.tokenizer), "bos_token", None)
        add = bos is None or not text.startswith(bos)
        return list(self.tokenizer.encode(text, add_special_tokens=add))

    # ----------------------------------------------------------------- public entry

    def generate(self, prompts: Sequence[Prompt], *, max_tokens: int = 128, temp: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None, batch_size: int = 8,
                 stream_callback: StreamCallback | None = None, stop: Sequence[str] | None = None,
                 progress: Callable[[int], None] | None = None) -> list[Result]:
        """Generate one reply per prompt, in input order.

        prompts:   chat message lists (rendered with the model's template), raw strings or
                   token-id lists.
        temp, top_p: sampling (temp 0 = greedy), through ``mlx_lm.sample_utils.make_sampler``.
        seed:      seeds MLX's generator first, so a run is reproducible (for the same
                   prompts and batch size).
        stream_callback(i, piece): called with each new piece of prompt ``i``'s reply text;
                   text that could begin a stop string is held back until decided.
        stop:      stop strings (default: the model's template stop strings).
        progress(n): called with the number of prompts finished since the last call.
        """
        from mlx_lm.sample_utils import make_sampler

        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if seed is not None:
            mx.random.seed(seed)
        sampler = make_sampler(temp=temp, top_p=top_p if 0 < top_p < 1 else 0.0)
        stops = self.stop if stop is None else [s for s in stop if s]
        token_lists = [self.prompt_tokens(p) for p in prompts]
        for i, toks in enumerate(token_lists):
            if not toks:
                raise ValueError(f"prompt {i} is empty")
        rows = [_Row(i, toks, self.tokenizer.detokenizer, self.eos_ids, stops, max_tokens,
                     stream_callback) for i, toks in enumerate(token_lists)]
        results: list[Result | None] = [None] * len(rows)

        if not self.batched:
            for row in rows:
                row.t_start = time.perf_counter()
                self._generate_unbatched(row, sampler)
                results[row.index] = self._result(row, row.t_start, stops)
                if progress:
                    progress(1)
            return results  # type: ignore[return-value]

        order, group_prefix = self._plan(token_lists)
        for row in rows:
            row.group_prefix = group_prefix[row.index]

        def finished(row: _Row) -> None:
            results[row.index] = self._result(row, row.t_start, stops)
            if progress:
                progress(1)

        host = _HOST_MATH.active
        _HOST_MATH.active = self.uses_host_math()
        try:
            if len(token_lists) > 1:
                # The part every prompt shares (chat header + system text) is computed once.
                common = min(_lcp(token_lists[order[0]], token_lists[order[-1]]),
                             *(len(t) - 1 for t in token_lists))
                if common >= self.min_shared:
                    self._prefix(token_lists[order[0]][:common])
            queue = deque(rows[i] for i in order)
            if temp == 0 and self.draft_tokens > 0:
                self._decode_speculative(queue, batch_size, finished)
            else:
                self._decode(queue, sampler, batch_size, finished)
        finally:
            _HOST_MATH.active = host
            if self.store.max_bytes <= 0:
                self.store.clear()  # reuse within a call only
        self.stats.prompts += len(rows)
        self.stats.prompt_tokens += sum(len(t) for t in token_lists)
        return results  # type: ignore[return-value]

    @staticmethod
    def _result(row: _Row, t0: float, stops: list[str]) -> Result:
        return Result(text=row.text, sql=extract_sql(row.text, stops), n_prompt_tokens=len(row.prompt),
                      n_tokens=len(row.generated), seconds=max(0.0, row.t_end - t0),
                      finish_reason=row.finish_reason or "length", n_cached_tokens=row.cached,
                      tokens=list(row.generated))

    # ----------------------------------------------------------------- planning

    def _plan(self, token_lists: list[list[int]]) -> tuple[list[int], list[int]]:
        """Order prompts so that shared prefixes are adjacent; for each prompt, the length of
        the prefix its group shares (0 when it shares nothing worth caching)."""
        order = sorted(range(len(token_lists)), key=lambda i: token_lists[i])
        group_prefix = [0] * len(token_lists)
        if len(order) < 2:
            return order, group_prefix
        adjacent = [_lcp(token_lists[a], token_lists[b]) for a, b in zip(order, order[1:])]
        floor = min(adjacent)  # the prefix every prompt shares
        groups: list[list[int]] = [[order[0]]]
        shared = [len(token_lists[order[0]])]
        for i, n in zip(order[1:], adjacent):
            # Join the current group while it still shares a useful amount beyond the common
            # floor, and not far less than the group shares so far (a weak link must not cut
            # a long shared schema down to a few tokens for everyone).
            joined = min(shared[-1], n)
            if n - floor >= self.min_shared and (len(groups[-1]) == 1 or joined * 2 >= shared[-1]):
                groups[-1].append(i)
                shared[-1] = joined
            else:
                groups.append([i])
                shared.append(len(token_lists[i]))
        for members, n in zip(groups, shared):
            if len(members) < 2:
                continue
            n = min(n, *(len(token_lists[i]) - 1 for i in members))
            for i in members:
                group_prefix[i] = n
        return order, group_prefix

    # ----------------------------------------------------------------- prefill

    def _prefix(self, tokens: list[int]) -> _Prefix:
        """The KV cache of ``tokens`` (stored), computed from the longest stored prefix."""
        entry, reused = self.store.lookup(tokens)
        if entry is not None and reused == len(tokens):
            if len(entry.tokens) == reused:
                return entry
            new = _Prefix(tuple(tokens), [(k[..., :reused, :], v[..., :reused, :]) for k, v in entry.kv])
            self.store.add(new)
            return new
        batch = _Batch(np.ones((1, reused), dtype=bool), np.array([reused]))
        if entry is not None and reused:
            caches = [_LayerCache(batch, k[..., :reused, :], v[..., :reused, :]) for k, v in entry.kv]
        else:
            caches = [_LayerCache(batch) for _ in range(self.n_layers)]
        rest = tokens[reused:]
        for s in range(0, len(rest), self.prefill_step):
            chunk = rest[s: s + self.prefill_step]
            batch.begin(len(chunk))
            self.model(mx.array([chunk]), cache=caches)
            batch.end()
            # Only the cache is evaluated: the logits of a prefill are never computed.
            mx.eval([c.state for c in caches])
        self.stats.computed_prompt_tokens += len(rest)
        new = _Prefix(tuple(tokens), [c.snapshot() for c in caches])
        self.store.add(new)
        return new

    def _prefill(self, rows: list[_Row], sampler) -> "_Active":
        """Run ``rows``' prompts through the model; returns them as a batch whose first tokens
        are queued (not yet read)."""
        # 1. Each row starts from a cached prefix; long remainders are prefilled alone.
        starts: list[tuple[_Prefix | None, int]] = []
        for row in rows:
            toks = row.prompt
            if row.group_prefix:
                entry, n = self._prefix(toks[: row.group_prefix]), row.group_prefix
            else:
                entry, n = self.store.lookup(toks)
                n = min(n, len(toks) - 1)
            row.cached = n
            if len(toks) - n > self.block_tokens:
                entry, n = self._prefix(toks[:-1]), len(toks) - 1
            starts.append((entry, n))

        # 2. Rows of similar remainder length are prefilled together, so that little of a
        # block is padding.
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].prompt) - starts[i][1])
        remainders = [len(rows[i].prompt) - starts[i][1] for i in order]
        active = None
        for lo, hi in _split_by_length(remainders, self.call_overhead_tokens):
            part = order[lo:hi]
            new = self._prefill_block([rows[i] for i in part], [starts[i] for i in part], sampler)
            active = new if active is None else active.extend(new)
        return active

    def _prefill_block(self, rows: list[_Row], starts: list[tuple[_Prefix | None, int]], sampler) -> "_Active":
        """Rows starting from cached prefixes, their remainders prefilled as one block."""
        # One cache for these rows: prefixes right-aligned in P columns (left padding before).
        lengths = np.array([n for _, n in starts])
        P = int(lengths.max())
        batch = _Batch(np.arange(P)[None, :] >= (P - lengths)[:, None], lengths)
        if P == 0:
            caches = [_LayerCache(batch) for _ in range(self.n_layers)]
        else:
            caches = []
            ref = next(e for e, n in starts if n)
            for layer in range(self.n_layers):
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

        # The remainders as one left-padded block; all but its last column only fill the
        # cache, the last column gives every row's first logits.
        blocks = [row.prompt[n:] for row, (_, n) in zip(rows, starts)]
        self.stats.computed_prompt_tokens += sum(len(b) for b in blocks)
        W = max(len(b) for b in blocks)
        pad = np.array([W - len(b) for b in blocks])
        block = mx.array([[0] * (W - len(b)) + b for b in blocks])
        if self._split is not None:
            # One pass over the block; only the last column (every row's last prompt token,
            # always real) goes through the output projection.
            backbone, head = self._split
            batch.begin(W, pad)
            y = self._sample(head(backbone(block, cache=caches)[:, -1:, :]), sampler)
            batch.end()
            return _Active(batch, caches, list(rows), y)
        if W > 1:
            batch.begin(W - 1, pad)
            self.model(block[:, :-1], cache=caches)
            batch.end()
            mx.eval([c.state for c in caches])
        batch.begin(1)  # every row's last prompt token is real
        y = self._sample(self.model(block[:, -1:], cache=caches), sampler)
        batch.end()
        return _Active(batch, caches, list(rows), y)

    # ----------------------------------------------------------------- decode

    def _admit(self, active: "_Active | None", queue: deque, batch_size: int, sampler) -> "_Active | None":
        """Prefill queued prompts into the free rows when at least a quarter of the batch is
        free (or nothing is active); returns the new rows as a batch (their first tokens
        evaluated, not yet read), or None."""
        free = batch_size - (active.size if active else 0)
        if not queue or (active is not None and free < min(max(1, batch_size // 4), len(queue))):
            return None
        t = time.perf_counter()
        rows = [queue.popleft() for _ in range(min(free, len(queue)))]
        for row in rows:
            row.t_start = t
        new = self._prefill(rows, sampler)
        mx.eval(new.y)
        self.stats.prefill_seconds += time.perf_counter() - t
        return new

    def _finish(self, row: _Row, now: float, finished: Callable[[_Row], None]) -> None:
        row.t_end = now
        self.stats.generated_tokens += len(row.generated)
        finished(row)

    def _decode(self, queue: deque, sampler, batch_size: int, finished: Callable[[_Row], None]) -> None:
        """Continuous batching: decode the active rows one token per step, and whenever at
        least a quarter of the batch has finished, prefill queued prompts into the free rows."""
        active: _Active | None = None
        while queue or active is not None:
            new = self._admit(active, queue, batch_size, sampler)
            if new is not None:
                active = new if active is None else active.extend(new)

            t = time.perf_counter()
            # Queue the next step before reading this step's tokens, so the host-side work
            # (detokenizing, stop strings) overlaps the model's.
            next_y = None
            if any(len(r.generated) + 2 <= r.max_tokens for r in active.rows):
                active.batch.begin(1)
                next_y = self._sample(self.model(active.y[:, None], cache=active.caches), sampler)
                active.batch.end()
                mx.async_eval(next_y)
                self.stats.decode_steps += 1
                self.stats.decode_row_steps += active.size
            tokens = active.y.tolist()
            now = time.perf_counter()
            keep = []
            for j, (row, tok) in enumerate(zip(active.rows, tokens)):
                if row.add(int(tok)):
                    self._finish(row, now, finished)
                else:
                    keep.append(j)
            if not keep:
                active = None
            else:
                assert next_y is not None, "a row outlived max_tokens"
                active.y = next_y
                if len(keep) < active.size:
                    active.filter(keep)
            self.stats.decode_seconds += time.perf_counter() - t

    def _decode_speculative(self, queue: deque, batch_size: int, finished: Callable[[_Row], None]) -> None:
        """Greedy decoding with prompt-lookup drafts (:class:`_Lookup`): each step feeds every
        row its pending token plus up to ``draft_tokens`` guesses, and keeps the guesses that
        equal the model's own greedy choice, plus that choice after the last one kept. The
        output is greedy decoding's; a step may yield several tokens per row. Rejected guesses
        stay in the cache as masked holes."""
        from mlx_lm.sample_utils import make_sampler

        greedy = make_sampler(temp=0.0)
        active: _Active | None = None
        pending: list[int] = []  # each active row's next input token (already added to the row)
        while queue or active is not None:
            new = self._admit(active, queue, batch_size, greedy)
            if new is not None:
                now = time.perf_counter()
                keep, first = [], []
                for j, (row, tok) in enumerate(zip(new.rows, new.y.tolist())):
                    row.lookup = _Lookup(row.prompt)
                    if row.add(int(tok)):
                        self._finish(row, now, finished)
                    else:
                        keep.append(j)
                        first.append(int(tok))
                if len(keep) < new.size:
                    new = new.filter(keep) if keep else None
                if new is not None:
                    active = new if active is None else active.extend(new)
                    pending += first
            if active is None:
                continue

            t = time.perf_counter()
            # Guesses are cheap while a step is bound by reading the weights, and not once the
            # batch itself fills the matrix products: feed at most draft_budget tokens a step.
            k = min(self.draft_tokens, self.draft_budget // active.size - 1)
            drafts = [row.lookup.draft(min(k, row.max_tokens - len(row.generated) - 1))
                      for row in active.rows]
            W = 1 + max(len(d) for d in drafts)
            lengths = np.array([1 + len(d) for d in drafts])
            block = mx.array([[y] + d + [0] * (W - 1 - len(d)) for y, d in zip(pending, drafts)])
            active.batch.begin(W, lengths=lengths)
            logits = self.model(block, cache=active.caches)  # (B, W, V)
            active.batch.end()
            # (B, W): the greedy token after each fed one. The argmax of the logits is the
            # argmax of the log-probabilities; skipping the normalisation saves B x W x vocab
            # exponentials a step (MLX's CPU exp is scalar: ~10 ms for 16 rows of 49,152).
            choice = mx.argmax(logits, axis=-1).tolist()
            self.stats.decode_steps += 1
            self.stats.decode_row_steps += active.size

            now = time.perf_counter()
            kept = np.ones(active.size, dtype=np.int64)
            keep, pending = [], []
            for j, (row, d, c) in enumerate(zip(active.rows, drafts, choice)):
                a = 0
                while a < len(d) and d[a] == c[a]:
                    a += 1
                kept[j] = 1 + a
                self.stats.drafted_tokens += len(d)
                self.stats.accepted_tokens += a
                done = False
                for tok in d[:a] + [c[a]]:
                    if row.add(int(tok)):
                        done = True
                        break
                if done:
                    self._finish(row, now, finished)
                else:
                    keep.append(j)
                    pending.append(int(c[a]))
            active.batch.keep_block_prefix(kept)
            if not keep:
                active = None
            elif len(keep) < active.size:
                active.filter(keep)
            self.stats.decode_seconds += time.perf_counter() - t

    @staticmethod
    def _sample(logits: mx.array, sampler) -> mx.array:
        logits = logits[:, -1, :]
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        return sampler(logprobs)

    # ----------------------------------------------------------------- fallback

    def _generate_unbatched(self, row: _Row, sampler) -> None:
        """One prompt through mlx_lm's ``generate_step`` (models with non-standard caches)."""
        from mlx_lm.generate import generate_step

        for tok, _ in generate_step(mx.array(row.prompt), self.model, max_tokens=row.max_tokens,
                                    sampler=sampler):
            if row.add(int(tok)):
                break
        row.t_end = time.perf_counter()
        row.finish_reason = row.finish_reason or "length"
