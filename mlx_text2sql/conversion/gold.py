"""Checking that each gold query runs on its database, and whether it returns anything.

Pure Python: no MLX import.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field

from ..example import Example
from ..sources.databases import connect_readonly
from ..sources.staging import SourceResult

GOLD_TIME_LIMIT_S = 5.0


@dataclass
class GoldStats:
    checked: int = 0
    errors: int = 0
    empty: int = 0
    with_data: int = 0          # checked against a database that has rows
    with_data_nonempty: int = 0
    error_examples: list[str] = field(default_factory=list)


def _has_value(rows: list[tuple]) -> bool:
    return any(v is not None for row in rows for v in row)


def check_gold(examples: list[Example], result: SourceResult, stats: GoldStats,
               progress: bool = True, time_limit: float = GOLD_TIME_LIMIT_S) -> None:
    """Run every gold query on its database (read-only, time-limited): sets
    ``meta["gold_error"]`` when it fails and ``meta["gold_empty"]`` (no row with a non-NULL
    value) for databases with data."""
    from tqdm import tqdm

    by_db: dict[str, list[Example]] = {}
    for ex in examples:
        if ex.db_path:
            by_db.setdefault(ex.db_path, []).append(ex)
    bar = tqdm(total=sum(map(len, by_db.values())), desc="checking gold SQL", unit=" q",
               disable=not progress, leave=False, dynamic_ncols=True)
    for db, exs in by_db.items():
        try:
            conn = connect_readonly(result.staging.current(db))
        except sqlite3.Error as e:
            for ex in exs:
                ex.meta["gold_error"] = f"cannot open database: {e}"
            stats.checked += len(exs)
            stats.errors += len(exs)
            bar.update(len(exs))
            continue
        deadline = [0.0]
        conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline[0] else 0, 10_000)
        try:
            for ex in exs:
                stats.checked += 1
                has_rows = bool(ex.meta.get("has_rows"))
                deadline[0] = time.monotonic() + time_limit
                try:
                    rows = conn.execute(ex.sql).fetchmany(1000)
                    ex.meta.pop("gold_error", None)
                    if has_rows:
                        stats.with_data += 1
                        empty = not _has_value(rows)
                        ex.meta["gold_empty"] = empty
                        stats.empty += empty
                        stats.with_data_nonempty += not empty
                except sqlite3.Error as e:
                    msg = str(e)
                    if msg == "interrupted":
                        msg = f"took longer than {time_limit:g} s"
                    ex.meta["gold_error"] = msg
                    stats.errors += 1
                    if len(stats.error_examples) < 10:
                        stats.error_examples.append(f"{ex.id}: {msg}: {ex.sql}")
                bar.update(1)
        finally:
            conn.close()
    bar.close()
