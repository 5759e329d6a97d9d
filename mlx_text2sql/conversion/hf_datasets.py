"""Records loaded through the ``datasets`` library (``--hf-dataset``).

Pure Python: ``datasets`` is imported only when it is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError


def load_hf_splits(name: str, split: str | None, config: str | None) -> dict[str, Any]:
    """Records of a dataset through the ``datasets`` library, as ``{split: Dataset}``.

    ``name`` is a folder written by ``save_to_disk``, local data files (a file or a folder of
    .json/.jsonl/.parquet/.csv), or a Hub dataset name (needs network or a cache).
    """
    try:
        import datasets
    except ImportError:
        raise ConfigError("--hf-dataset needs the 'datasets' package: pip install datasets") from None
    path = Path(name)
    try:
        if path.is_dir() and any((path / f).is_file() for f in
                                 ("dataset_info.json", "state.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(str(path))
        elif path.exists():
            files = [path] if path.is_file() else sorted(
                p for p in path.rglob("*") if p.suffix.lower() in (".json", ".jsonl", ".parquet", ".csv"))
            if not files:
                raise InputError("no .json/.jsonl/.parquet/.csv data files here", str(path))
            kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}[files[0].suffix.lower()]
            ds = datasets.load_dataset(kind, data_files=[str(f) for f in files])
        else:
            ds = datasets.load_dataset(name, config) if config else datasets.load_dataset(name)
    except (InputError, ConfigError):
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds (network, format, ...)
        raise InputError(f"cannot load the dataset: {e}", name) from None
    if isinstance(ds, datasets.DatasetDict):
        splits = dict(ds)
    else:
        splits = {split or "train": ds}
        split = None
    if split is not None:
        if split not in splits:
            raise ConfigError(f"dataset {name!r} has no split {split!r}; it has {', '.join(splits)}")
        splits = {split: splits[split]}
    return splits
