"""Decoding state: one prompt's row (:class:`_Row`, with its prompt-lookup drafts
:class:`_Lookup`) and the rows decoded together (:class:`_Active`)."""

from __future__ import annotations

from typing import Callable, Sequence

import mlx.core as mx
import numpy as np

from .cache import _Batch, _LayerCache

StreamCallback = Callable[[int, str], None]
Cancelled = Callable[[int], bool]


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
        so it proposes one token only (on WikiSQL replies: nearly as many tokens per step,
        far fewer wasted guesses)."""
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
                 stop: list[str], max_tokens: int, callback: StreamCallback | None,
                 cancelled: Cancelled | None = None):
        self.index = index
        self.cancelled = cancelled
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
        self.constraint = None  # a NameConstraint (mlx_text2sql.sql.constrain), or None
        self.cstate = None  # the constraint's state after the tokens added so far

    def add(self, token: int) -> bool:
        """Take one generated token; returns True when the row is finished."""
        self.generated.append(token)
        if self.lookup is not None:
            self.lookup.push(token)
        if token in self.eos_ids:
            self.finish_reason = "stop"
        elif self.gone():
            self.finish_reason = "cancelled"
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

    def gone(self) -> bool:
        """Whoever asked for this row no longer wants it (``cancelled(index)`` is true)."""
        return self.cancelled is not None and bool(self.cancelled(self.index))

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


class _Active:
    """The rows being decoded together: their cache, and their next tokens (queued)."""

    def __init__(self, batch: _Batch, caches: list[_LayerCache], rows: list[_Row], y: mx.array):
        self.batch = batch
        self.caches = caches
        self.rows = rows
        self.y = y  # (B,) the token each row takes next, not yet added to the rows
        self.first_logits: mx.array | None = None  # (B, V) after a prefill: the logits of y
        self.step_logits: mx.array | None = None  # (B, W, V) of a draft-verifying step

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
        self.first_logits = (mx.concatenate([self.first_logits, other.first_logits])
                             if self.first_logits is not None and other.first_logits is not None else None)
        self.rows += other.rows
        return self
