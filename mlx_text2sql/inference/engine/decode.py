"""Decoding loops: continuous batching (:func:`decode`) and greedy decoding that verifies
prompt-lookup drafts (:func:`decode_speculative`).

Both take the :class:`~.generator.SQLGenerator` (model, settings, statistics, read at call
time), a queue of :class:`~.rows._Row` in prefill order, the batch size, and ``finished(row)``,
called once per row as soon as it is done. Whenever at least a quarter of the batch is free,
queued prompts are prefilled into the free rows (:func:`admit`).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

import mlx.core as mx
import numpy as np

from .prefill import prefill, sample
from .rows import _Active, _Lookup, _Row

Finished = Callable[[_Row], None]


def admit(gen, active: _Active | None, queue: deque, batch_size: int, sampler,
          finished: Finished) -> _Active | None:
    """Prefill queued prompts into the free rows when at least a quarter of the batch is
    free (or nothing is active); returns the new rows as a batch (their first tokens
    evaluated, not yet read), or None. A row whose caller is gone (``_Row.gone``) when its
    turn comes is finished as "cancelled" without a prefill."""
    free = batch_size - (active.size if active else 0)
    if not queue or (active is not None and free < min(max(1, batch_size // 4), len(queue))):
        return None
    t = time.perf_counter()
    rows = []
    while queue and len(rows) < free:
        row = queue.popleft()
        row.t_start = t
        if row.gone():
            row.finish_reason = "cancelled"
            finish(gen, row, t, finished)
        else:
            rows.append(row)
    if not rows:
        return None
    new = prefill(gen, rows, sampler)
    mx.eval(new.y)
    gen.stats.prefill_seconds += time.perf_counter() - t
    return new


def finish(gen, row: _Row, now: float, finished: Finished) -> None:
    row.t_end = now
    gen.stats.generated_tokens += len(row.generated)
    finished(row)


def decode(gen, queue: deque, sampler, batch_size: int, finished: Finished) -> None:
    """Continuous batching: decode the active rows one token per step, and whenever at
    least a quarter of the batch has finished, prefill queued prompts into the free rows."""
    active: _Active | None = None
    while queue or active is not None:
        new = admit(gen, active, queue, batch_size, sampler, finished)
        if new is not None:
            new.first_logits = None
            active = new if active is None else active.extend(new)
        if active is None:  # every row admitted this turn was cancelled
            continue

        t = time.perf_counter()
        # Queue the next step before reading this step's tokens, so the host-side work
        # (detokenizing, stop strings) overlaps the model's.
        next_y = None
        if any(len(r.generated) + 2 <= r.max_tokens for r in active.rows):
            active.batch.begin(1)
            next_y = sample(gen.model(active.y[:, None], cache=active.caches), sampler)
            active.batch.end()
            mx.async_eval(next_y)
            gen.stats.decode_steps += 1
            gen.stats.decode_row_steps += active.size
        tokens = active.y.tolist()
        now = time.perf_counter()
        keep = []
        for j, (row, tok) in enumerate(zip(active.rows, tokens)):
            if row.add(int(tok)):
                finish(gen, row, now, finished)
            else:
                keep.append(j)
        if not keep:
            active = None
        else:
            assert next_y is not None, "a row outlived max_tokens"
            active.y = next_y
            if len(keep) < active.size:
                active.filter(keep)
        gen.stats.decode_seconds += time.perf_counter() - t


def decode_speculative(gen, queue: deque, batch_size: int, finished: Finished) -> None:
    """Greedy decoding with prompt-lookup drafts (:class:`~.rows._Lookup`): each step feeds
    every row its pending token plus up to ``gen.draft_tokens`` guesses, and keeps the guesses
    that equal the model's own greedy choice, plus that choice after the last one kept. The
    output is greedy decoding's; a step may yield several tokens per row. Rejected guesses
    stay in the cache as masked holes."""
    from mlx_lm.sample_utils import make_sampler

    greedy = make_sampler(temp=0.0)
    active: _Active | None = None
    pending: list[int] = []  # each active row's next input token (already added to the row)
    while queue or active is not None:
        new = admit(gen, active, queue, batch_size, greedy, finished)
        if new is not None:
            new, first = _take_first_tokens(gen, new, finished)
            if new is not None:
                active = new if active is None else active.extend(new)
                pending += first
        if active is None:
            continue

        t = time.perf_counter()
        drafts, choice = _verify_drafts(gen, active, pending)
        active, pending = _accept(gen, active, drafts, choice, finished)
        gen.stats.decode_seconds += time.perf_counter() - t


def _take_first_tokens(gen, new: _Active, finished: Finished) -> tuple[_Active | None, list[int]]:
    """Add each newly prefilled row's first token (and start its draft lookup); returns the
    rows still going (None if none) and their first tokens, the next step's inputs."""
    now = time.perf_counter()
    keep, first = [], []
    for j, (row, tok) in enumerate(zip(new.rows, new.y.tolist())):
        row.lookup = _Lookup(row.prompt)
        if row.constraint is not None:
            tok = constrain(gen, row, int(tok), new.first_logits[j])
        if row.add(int(tok)):
            finish(gen, row, now, finished)
        else:
            keep.append(j)
            first.append(int(tok))
    new.first_logits = None
    if len(keep) < new.size:
        new = new.filter(keep) if keep else None
    return new, first


def _verify_drafts(gen, active: _Active, pending: list[int]) -> tuple[list[list[int]], list[list[int]]]:
    """One model call over every row's pending token and its guesses; returns the guesses
    and (B, W) the greedy token after each fed one."""
    # Guesses are cheap while a step is bound by reading the weights, and not once the
    # batch itself fills the matrix products: feed at most draft_budget tokens a step.
    k = min(gen.draft_tokens, gen.draft_budget // active.size - 1)
    drafts = [row.lookup.draft(min(k, row.max_tokens - len(row.generated) - 1))
              for row in active.rows]
    W = 1 + max(len(d) for d in drafts)
    lengths = np.array([1 + len(d) for d in drafts])
    block = mx.array([[y] + d + [0] * (W - 1 - len(d)) for y, d in zip(pending, drafts)])
    active.batch.begin(W, lengths=lengths)
    logits = gen.model(block, cache=active.caches)  # (B, W, V)
    active.batch.end()
    # (B, W): the greedy token after each fed one. The argmax of the logits is the
    # argmax of the log-probabilities; skipping the normalisation saves B x W x vocab
    # exponentials a step (MLX's CPU exp is scalar, and the vocabulary is large).
    choice = mx.argmax(logits, axis=-1).tolist()
    gen.stats.decode_steps += 1
    gen.stats.decode_row_steps += active.size
    if any(row.constraint is not None for row in active.rows):
        active.step_logits = logits  # evaluated with the argmax: the constraint reads it
    return drafts, choice


def _accept(gen, active: _Active, drafts: list[list[int]], choice: list[list[int]],
            finished: Finished) -> tuple[_Active | None, list[int]]:
    """Each row keeps its guesses up to the first the model disagrees with, plus the model's
    own choice after them; returns the rows still going (None if none) and their pending
    tokens. A constrained row's choice at each position is the constraint's (:func:`constrain`)."""
    now = time.perf_counter()
    kept = np.ones(active.size, dtype=np.int64)
    keep, pending = [], []
    for j, (row, d, c) in enumerate(zip(active.rows, drafts, choice)):
        a = 0
        while True:
            if row.constraint is not None:  # the constraint's choice (None once it is dropped)
                c[a] = constrain(gen, row, c[a], active.step_logits[j, a])
            if a < len(d) and d[a] == c[a]:
                a += 1
            else:
                break
        kept[j] = 1 + a
        gen.stats.drafted_tokens += len(d)
        gen.stats.accepted_tokens += a
        done = False
        for tok in d[:a] + [c[a]]:
            if row.add(int(tok)):
                done = True
                break
        if done:
            finish(gen, row, now, finished)
        else:
            keep.append(j)
            pending.append(int(c[a]))
    active.batch.keep_block_prefix(kept)
    active.step_logits = None
    if not keep:
        return None, pending
    if len(keep) < active.size:
        active.filter(keep)
    return active, pending


def allowed(gen, row: _Row, token: int):
    """The row's constraint state after ``token``, or None if the constraint forbids it
    (the end of the reply is a token too: EOS is allowed where the query may end)."""
    if token in row.eos_ids:
        return row.cstate if row.constraint.can_end(row.cstate) else None
    pieces = gen.token_pieces()
    if token >= len(pieces):  # an id of a padded vocabulary: no text
        return None
    return row.constraint.step(row.cstate, pieces[token])


def constrain(gen, row: _Row, token: int, logits: mx.array) -> int:
    """The row's next token under its constraint: ``token`` (the model's choice) if allowed,
    else the most likely allowed one of the ``gen.constraint_top_k`` most likely (``logits``:
    this position's, (V,)). When none of those is allowed the constraint is dropped for the
    rest of the row and ``token`` taken. Advances the row's constraint state."""
    state = allowed(gen, row, token)
    if state is None:
        k = min(gen.constraint_top_k, logits.shape[-1])
        top = mx.argpartition(-logits, k - 1)[:k]
        for cand in top[mx.argsort(-logits[top])].tolist():
            state = allowed(gen, row, cand)
            if state is not None:
                gen.stats.constrained_tokens += 1
                token = cand
                break
        else:
            gen.stats.constraints_dropped += 1
            row.constraint = row.cstate = None
            return token
    row.cstate = state
    return token
