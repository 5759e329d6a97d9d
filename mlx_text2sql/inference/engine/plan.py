"""Planning a call: which prompts share a prefix worth computing once, and how prompt
remainders of different lengths are cut into separately prefilled blocks. Token lists in,
indices out: no model here."""

from __future__ import annotations

from typing import Sequence

from .cache import _lcp


def plan_groups(token_lists: list[list[int]], min_shared: int) -> tuple[list[int], list[int]]:
    """Order prompts so that shared prefixes are adjacent; for each prompt, the length of
    the prefix its group shares (0 when it shares nothing worth caching). ``min_shared`` is
    the fewest tokens beyond the prefix common to all prompts that make a group worth caching
    separately."""
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
        if n - floor >= min_shared and (len(groups[-1]) == 1 or joined * 2 >= shared[-1]):
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


def common_prefix(token_lists: list[list[int]], order: list[int]) -> int:
    """The number of leading tokens every prompt shares (at most each prompt's length - 1),
    given ``order`` from :func:`plan_groups`: sorted, so the first and last differ most."""
    return min(_lcp(token_lists[order[0]], token_lists[order[-1]]), *(len(t) - 1 for t in token_lists))


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
