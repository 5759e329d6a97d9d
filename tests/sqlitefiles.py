"""Small SQLite database files for tests, written from Python rows."""

from __future__ import annotations

import hashlib
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


def make_concert_db(path: Path, rows: int = 200) -> Path:
    """The executor tests' database at ``path``: ``singer`` with ``rows`` rows (plus an index and
    a view over it) and ``nums`` with 0..999. Returns ``path``."""
    con = sqlite3.connect(path)
    con.executescript(
        """
        CREATE TABLE singer (id INTEGER PRIMARY KEY, name TEXT, age INTEGER, score REAL);
        CREATE TABLE nums (n INTEGER);
        CREATE INDEX singer_age ON singer(age);
        CREATE VIEW old_singers AS SELECT name FROM singer WHERE age > 40;
        """
    )
    con.executemany("INSERT INTO singer VALUES (?, ?, ?, ?)",
                    [(i, f"Singer {i}", 20 + i % 50, i / 3) for i in range(rows)])
    con.executemany("INSERT INTO nums VALUES (?)", [(i,) for i in range(1000)])
    con.commit()
    con.close()
    return path


def concert_db_in(folder: Path) -> Path:
    """``folder/dbs/concert.sqlite`` (the folder created) written by :func:`make_concert_db`."""
    (folder / "dbs").mkdir()
    return make_concert_db(folder / "dbs" / "concert.sqlite")


def file_digest(path: Path) -> str:
    """SHA-256 of the file's bytes, to prove a database file was left unchanged."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
