"""One converter per dataset format, all producing :class:`~mlx_text2sql.example.Example`.

Each module offers ``read(input_path, options, problems) -> SourceResult`` for the original
files and ``read_hf(splits, options, problems) -> SourceResult`` for records loaded through the
``datasets`` library; :mod:`mlx_text2sql.conversion` picks one by format name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

FORMATS = {
    "wikisql": "wikisql",
    "nsql": "nsql",
    "sql-create-context": "sql_create_context",
    "spider": "spider",
}


@dataclass
class SourceOptions:
    """Settings the converters share.

    out_dir:     where the JSONL files go; databases a converter builds go here too.
    sample_rows: sample rows kept per table for the prompt (0: none).
    limit:       at most this many examples from each input file (None: all).
    db_name:     file name of the WikiSQL database built in ``out_dir``.
    build_db:    NSQL / sql-create-context: build an empty SQLite database per distinct schema.
    tables:      a tables file overriding the one found beside the input (WikiSQL, Spider).
    databases:   the folder holding Spider's ``<db_id>/<db_id>.sqlite`` files.
    progress:    show tqdm progress bars.
    """

    out_dir: str = "data"
    sample_rows: int = 3
    limit: int | None = None
    db_name: str = "wikisql.sqlite"
    build_db: bool = True
    tables: str | None = None
    databases: str | None = None
    progress: bool = True


def get_source(fmt: str):
    """The converter module for a format name (see :data:`FORMATS`)."""
    from ..errors import ConfigError

    key = fmt.lower().replace("_", "-")
    if key not in FORMATS:
        raise ConfigError(f"unknown dataset format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return importlib.import_module(f"{__name__}.{FORMATS[key]}")
