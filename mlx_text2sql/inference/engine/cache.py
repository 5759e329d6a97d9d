"""The engine's KV cache: one buffer per layer for a whole batch, and the prefix store.

A batch's rows share one :class:`_Batch` (which columns hold real tokens, each row's RoPE
position, the attention mask of the block being run); each layer has a :class:`_LayerCache`,
the object mlx_lm's attention layers call. :class:`PrefixStore` keeps the KV caches of
prompt prefixes (a schema's system + CREATE TABLE text) between calls, bounded in bytes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import mlx.core as mx
import numpy as np


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
