"""Running ``mlx-text2sql convert`` in tests and reading back what it wrote."""

from __future__ import annotations

import json
from pathlib import Path

from mlx_text2sql.convert import main


def converter(source: str, fixture: Path):
    """``convert(out, *args, src=fixture)``: converts ``src`` with ``source`` into ``out`` with
    every record in train (no valid/test split, no progress bar), asserts the exit code is 0 and
    returns the train records by id."""
    def convert(out: Path, *args: str, src: Path = fixture) -> dict[str, dict]:
        assert main([source, str(src), "--out", str(out), "--no-progress",
                     "--valid-fraction", "0", "--test-fraction", "0", *args]) == 0
        return {r["id"]: r for r in map(json.loads, open(out / "train.jsonl", encoding="utf-8"))}
    return convert
