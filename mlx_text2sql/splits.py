"""Deterministic train/valid/test splits by group: every example of a group (a WikiSQL table,
a Spider database, an NSQL schema) lands in the same split, so a model is never validated or
tested on a table it was trained on.

Pure Python, no MLX.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

SPLITS = ("train", "valid", "test")


def target_size(total: int, fraction: float | None, count: int | None) -> int:
    """Examples wanted in a split: ``count`` when given, else ``round(fraction * total)``
    (at least 1 when the fraction is positive and there is data)."""
    if count is not None:
        return max(0, min(count, total))
    if not fraction:
        return 0
    return max(1, round(fraction * total)) if total else 0


def split_by_group(keys: Sequence[str], *, valid: int, test: int, seed: int = 0
                   ) -> dict[str, list[int]]:
    """Indices of ``keys`` (one group key per example) for train, valid and test.

    Groups are sorted, shuffled with ``seed`` and dealt out whole: test takes groups until it
    holds at least ``test`` examples, then valid until ``valid``, train the rest; at least one
    group is always left for train. The result depends only on the multiset of keys, the
    sizes and the seed, not on the order of the input. Within a split, indices keep input order.
    """
    sizes: dict[str, int] = {}
    for k in keys:
        sizes[k] = sizes.get(k, 0) + 1
    groups = sorted(sizes)
    random.Random(seed).shuffle(groups)
    assign: dict[str, str] = {}
    pos = 0
    for split, want in (("test", test), ("valid", valid)):
        have = 0
        while have < want and pos < len(groups) - 1:  # keep one group for train
            assign[groups[pos]] = split
            have += sizes[groups[pos]]
            pos += 1
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for i, k in enumerate(keys):
        out[assign.get(k, "train")].append(i)
    return out
