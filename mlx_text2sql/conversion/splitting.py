"""Which examples go to train, valid and test.

Pure Python: no MLX import.
"""

from __future__ import annotations

from ..errors import ConfigError
from ..example import Example
from ..sources.staging import SourceResult
from ..splits import SPLITS, split_by_group, target_size
from .settings import Settings

# Where each official split file goes with --keep-splits (override with --split-map).
DEFAULT_SPLIT_MAP = {"train": "train", "train_spider": "train", "train_others": "train",
                     "dev": "valid", "valid": "valid", "validation": "valid", "test": "test"}


def assign_splits(result: SourceResult, s: Settings, notes: list[str]) -> dict[str, list[Example]]:
    """Examples per output split: pooled and split by group, or (``--keep-splits``) the
    official files kept, an output split with no file carved out of train by group."""
    out: dict[str, list[Example]] = {k: [] for k in SPLITS}
    if s.keep_splits:
        mapping = {**DEFAULT_SPLIT_MAP, **s.split_map}
        unknown = [name for name in result.splits if name not in mapping]
        if unknown:
            raise ConfigError([f"split {n!r} has no output split: add --split-map {n}=train "
                               "(or valid, test)" for n in unknown])
        for name, exs in result.splits.items():
            out[mapping[name]].extend(exs)
        carve = {k: not out[k] for k in ("valid", "test")}
        # Tables shared by two official splits defeat group splitting; say so.
        groups = {k: {e.split_key for e in out[k]} for k in SPLITS}
        shared = (groups["train"] & (groups["valid"] | groups["test"])) | (groups["valid"] & groups["test"])
        if shared:
            notes.append(f"{len(shared)} groups (tables/databases) appear in more than one official split")
        if not any(carve.values()) or not out["train"]:
            return out
        pool = out["train"]
    else:
        pool = [ex for exs in result.splits.values() for ex in exs]
        carve = {"valid": True, "test": True}
    total = len(pool)
    valid_n = target_size(total, s.valid_fraction, s.valid_size) if carve["valid"] else 0
    test_n = target_size(total, s.test_fraction, s.test_size) if carve["test"] else 0
    idx = split_by_group([ex.split_key for ex in pool], valid=valid_n, test=test_n, seed=s.seed)
    out["train"] = [pool[i] for i in idx["train"]]
    for k in ("valid", "test"):
        if carve[k]:
            out[k] = [pool[i] for i in idx[k]]
    return out
