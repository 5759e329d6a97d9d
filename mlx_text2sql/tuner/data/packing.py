"""Shared-prefix packing: questions on one schema run their common prompt prefix once per batch.

Text2SQL data repeats itself: several questions are asked about one schema (WikiSQL asks about
three per table), and the schema is most of each prompt. A packed batch runs each distinct
prompt prefix once (the "prefix pass", keeping every layer's keys and values) and each
question's remainder (the "segment pass") attending to its group's prefix keys/values. Every
example's loss is the same as if it were run alone (see ``trainer.make_packed_loss``); only the
repeated prefix work disappears.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .batches import loss_positions, round_up
from .encode import Sample


@dataclass
class PrefixGroup:
    """Sample indices that share their first ``prefix_len`` tokens (prefix_len < every member's
    prompt_len, so each member's segment holds at least the position predicting its answer)."""

    prefix_len: int
    members: list[int]


def _common_prefix(arrays: list[np.ndarray], limit: int) -> int:
    n = min(limit, *(len(a) for a in arrays))
    first = arrays[0][:n]
    for a in arrays[1:]:
        diff = np.nonzero(a[:n] != first)[0]
        if len(diff):
            n = int(diff[0])
            first = first[:n]
    return n


def prefix_groups(samples: list[Sample]) -> list[PrefixGroup]:
    """Group samples by ``Sample.group`` (schema) and find each group's shared token prefix.
    Samples without a group are groups of one (their prefix is their prompt minus one token)."""
    by: dict[str, list[int]] = {}
    singles = []
    for i, s in enumerate(samples):
        if s.group is None:
            singles.append([i])
        else:
            by.setdefault(s.group, []).append(i)
    out = []
    for members in [*by.values(), *singles]:
        limit = min(samples[i].prompt_len for i in members) - 1
        n = _common_prefix([samples[i].tokens for i in members], limit) if len(members) > 1 else limit
        if n <= 0 and len(members) > 1:           # nothing shared: one group per member
            out += [PrefixGroup(max(samples[i].prompt_len - 1, 0), [i]) for i in members]
        else:
            out.append(PrefixGroup(max(n, 0), members))
    return out


def packed_epoch(groups: list[PrefixGroup], lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                 bucket: int = 32) -> list[list[tuple[int, list[int]]]]:
    """The batches of one epoch for shared-prefix packing, a pure function of (seed, epoch).

    Each batch holds exactly ``batch_size`` examples as pieces ``(prefix_len, [sample indices])``.
    Groups are shuffled (and the members within each), then cut into windows of ``bucket``
    batches' worth of examples sorted by prefix length (little left padding), and batches are
    filled in that order: a group that does not fit the room left is split, its prefix then
    computed once per piece. The incomplete last batch is dropped, as in :func:`epoch_batches`.
    """
    rng = np.random.default_rng([seed, epoch, 1])
    order = rng.permutation(len(groups))
    shuffled = [(groups[g].prefix_len, [groups[g].members[j] for j in rng.permutation(len(groups[g].members))])
                for g in order]
    window = batch_size * bucket
    flat: list[tuple[int, list[int]]] = []
    i = 0
    while i < len(shuffled):
        part, count = [], 0
        while i < len(shuffled) and count < window:
            part.append(shuffled[i])
            count += len(shuffled[i][1])
            i += 1
        part.sort(key=lambda pm: (pm[0], max(lengths[m] - pm[0] for m in pm[1])))
        flat += part
    batches = _fill_runs(flat, itertools.repeat(batch_size))
    order = rng.permutation(len(batches))
    return [batches[k] for k in order]


def split_pieces(pieces: list[tuple[int, list[int]]], parts: int) -> list[list[tuple[int, list[int]]]]:
    """Cut a batch's pieces into ``parts`` runs of (nearly) equal example counts."""
    total = sum(len(m) for _, m in pieces)
    sizes = [total // parts + (k < total % parts) for k in range(parts)]
    return [p for p in _fill_runs(pieces, iter(sizes)) if p]


def _fill_runs(pieces: list[tuple[int, list[int]]], sizes) -> list[list[tuple[int, list[int]]]]:
    """Cut ``pieces`` (prompt length, member rows) in order into runs of the next size from the
    iterator ``sizes`` (0 once it is spent) members each, splitting a piece's members where a run
    fills; a last run that is not full is dropped."""
    out, current, room = [], [], next(sizes, 0)
    for plen, members in pieces:
        while members:
            take, members = members[:room], members[room:]
            current.append((plen, take))
            room -= len(take)
            if room == 0:
                out.append(current)
                current, room = [], next(sizes, 0)
    return out


@dataclass
class PackedBatch:
    """A shared-prefix batch (see :func:`packed_epoch`).

    prefix_inputs: (G, Lp) int32, each group's prefix LEFT-padded (so every prefix ends at
        position Lp - 1 and its segments continue at Lp; RoPE only sees relative positions).
    prefix_lens:   (G,) int32 real prefix lengths.
    seg_inputs:    (R, Ls) int32, each example's remaining input tokens, right-padded.
    group_index:   (R,) int32, the prefix row of each segment row.
    index/targets/weights: as in :class:`Batch`, flat positions into (R * Ls).
    tokens: the examples' standalone lengths (effective tokens); computed: tokens actually run.
    """

    prefix_inputs: np.ndarray
    prefix_lens: np.ndarray
    seg_inputs: np.ndarray
    group_index: np.ndarray
    index: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    tokens: int
    loss_tokens: int
    computed: int

    def arrays(self) -> tuple:
        return (self.prefix_inputs, self.prefix_lens, self.seg_inputs, self.group_index,
                self.index, self.targets, self.weights)


def collate_packed(samples: list[Sample], pieces: list[tuple[int, list[int]]], pad_to: int = 16,
                   pad_id: int = 0) -> PackedBatch:
    plens = [p for p, _ in pieces]
    Lp = round_up(max(plens), pad_to)
    prefix = np.full((len(pieces), Lp), pad_id, dtype=np.int32)
    rows, gidx = [], []
    for g, (p, members) in enumerate(pieces):
        first = samples[members[0]].tokens
        if p:
            prefix[g, Lp - p:] = first[:p]
        for m in members:
            rows.append((g, p, samples[m]))
            gidx.append(g)
    seg_lens = [len(s.tokens) - 1 - p for _, p, s in rows]
    Ls = round_up(max(seg_lens), pad_to)
    seg = np.full((len(rows), Ls), pad_id, dtype=np.int32)
    index, targets = [], []
    for r, ((g, p, s), n) in enumerate(zip(rows, seg_lens)):
        seg[r, :n] = s.tokens[p:-1]
        # segment position t is sequence position p + t; the answer tokens tokens[prompt_len:]
        # are predicted at sequence positions prompt_len-1 ... len-2.
        first = s.prompt_len - 1 - p
        index.append(r * Ls + np.arange(first, n, dtype=np.int32))
        targets.append(s.tokens[s.prompt_len: len(s.tokens)])
    index, targets, weights, n_loss = loss_positions(index, targets, pad_to)
    tokens = sum(len(s.tokens) for _, _, s in rows)
    computed = sum(plens) + sum(seg_lens)
    return PackedBatch(prefix, np.asarray(plens, dtype=np.int32), seg, np.asarray(gidx, dtype=np.int32),
                       index, targets, weights, int(tokens), n_loss, int(computed))
