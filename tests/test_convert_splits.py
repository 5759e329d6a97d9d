"""Group splits: deterministic, independent of input order, no group in two splits."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_text2sql.splits import split_by_group, target_size


def groups_of(keys, idx):
    return {s: {keys[i] for i in v} for s, v in idx.items()}


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.sampled_from([f"t{i}" for i in range(12)]), min_size=1, max_size=80),
       valid=st.integers(0, 40), test=st.integers(0, 40), seed=st.integers(0, 5))
def test_partition_properties(keys, valid, test, seed):
    idx = split_by_group(keys, valid=valid, test=test, seed=seed)
    # a partition of all indices, each split in input order
    assert sorted(i for v in idx.values() for i in v) == list(range(len(keys)))
    assert all(v == sorted(v) for v in idx.values())
    g = groups_of(keys, idx)
    assert not (g["train"] & g["valid"] or g["train"] & g["test"] or g["valid"] & g["test"])
    assert idx["train"], "train always keeps at least one group"
    # deterministic, and independent of the order examples come in
    assert split_by_group(keys, valid=valid, test=test, seed=seed) == idx
    shuffled = list(keys)
    random.Random(1).shuffle(shuffled)
    assert groups_of(shuffled, split_by_group(shuffled, valid=valid, test=test, seed=seed)) == g


def test_sizes_are_met_with_whole_groups():
    keys = [f"t{i // 5}" for i in range(100)]  # 20 groups of 5
    idx = split_by_group(keys, valid=10, test=20, seed=0)
    assert [len(idx[s]) for s in ("train", "valid", "test")] == [70, 10, 20]
    other = split_by_group(keys, valid=10, test=20, seed=1)
    assert groups_of(keys, other) != groups_of(keys, idx)


@pytest.mark.parametrize("total, fraction, count, want", [
    (100, 0.1, None, 10), (100, 0.0, None, 0), (5, 0.1, None, 1), (0, 0.1, None, 0),
    (100, 0.1, 7, 7), (100, 0.1, 500, 100), (100, None, None, 0),
])
def test_target_size(total, fraction, count, want):
    assert target_size(total, fraction, count) == want
