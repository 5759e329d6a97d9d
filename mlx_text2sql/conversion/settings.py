"""The settings of one conversion (the ``convert`` command builds and checks them from its flags).

Pure Python: no MLX import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..hints import DEFAULT_MAX_HINTS
from ..prompting.selection import DEFAULT_MAX_TABLES
from ..prompts import DEFAULT_SAMPLE_ROWS


@dataclass
class Settings:
    """One conversion's settings, as ``convert.settings_from_args`` checks them."""

    format: str
    input: str | None
    out: Path
    hf_dataset: str | None = None
    hf_split: str | None = None
    hf_config: str | None = None
    tables: str | None = None
    databases: str | None = None
    limit: int | None = None
    strict: bool = False
    record_format: str = "messages"
    chat_template: str | None = None
    model: str | None = None
    sample_rows: int = DEFAULT_SAMPLE_ROWS
    value_hints: bool = False
    max_hints: int = DEFAULT_MAX_HINTS
    max_tokens: int | None = None
    tokenizer: str | None = None
    select_tables: bool = False
    max_tables: int = DEFAULT_MAX_TABLES
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    valid_size: int | None = None
    test_size: int | None = None
    seed: int = 0
    keep_splits: bool = False
    split_map: dict[str, str] = field(default_factory=dict)
    db_name: str = "wikisql.sqlite"
    build_db: bool = True
    check_gold: bool = True
    progress: bool = True
