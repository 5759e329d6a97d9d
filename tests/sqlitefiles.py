"""Small SQLite database files for tests, written from Python rows."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path


def make_sqlite(path: Path, *tables: tuple[str, str, list[tuple]]) -> Path:
    """Write ``path`` with one table per ``(name, column definitions, rows)``; returns ``path``."""
    con = sqlite3.connect(path)
    for name, columns, rows in tables:
        con.execute(f'CREATE TABLE "{name}" ({columns})')
        if rows:
            con.executemany(f'INSERT INTO "{name}" VALUES ({", ".join("?" * len(rows[0]))})', rows)
    con.commit()
    con.close()
    return path


def spider_folder(fixture: Path, dest: Path, db_id: str,
                  files: tuple[str, ...] = ("tables.json", "train_spider.json", "dev.json")) -> Path:
    """A folder in Spider's layout at ``dest`` (created): ``files`` copied from ``fixture`` and
    ``database/<db_id>/<db_id>.sqlite`` built from ``fixture/<db_id>.sql``. Returns the
    database file."""
    dest.mkdir()
    for name in files:
        shutil.copy(fixture / name, dest / name)
    db = dest / "database" / db_id / f"{db_id}.sqlite"
    db.parent.mkdir(parents=True)
    con = sqlite3.connect(db)
    con.executescript((fixture / f"{db_id}.sql").read_text())
    con.close()
    return db
