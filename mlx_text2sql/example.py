"""The unit every stage shares: one question over a schema, its gold SQL, and where to run it.

Converters produce :class:`Example` objects; :mod:`mlx_text2sql.prompts` turns them into chat
messages; training, generation and evaluation all read the JSONL records written from them.
Pure Python: importing this module never imports MLX.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Column:
    name: str
    type: str = "TEXT"


@dataclass
class Table:
    """One table of a schema.

    ``rows`` are sample rows (cell values in column order) the prompt may show;
    ``create_sql`` is the source's own CREATE TABLE text when it gave one (NSQL,
    sql-create-context), used verbatim instead of a rendering of ``columns``.
    """

    name: str
    columns: list[Column] = field(default_factory=list)
    primary_key: list[str] = field(default_factory=list)
    # (column, referenced table, referenced column)
    foreign_keys: list[tuple[str, str, str]] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    create_sql: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["foreign_keys"] = [list(fk) for fk in self.foreign_keys]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Table":
        return cls(
            name=d["name"],
            columns=[Column(**c) for c in d.get("columns", [])],
            primary_key=list(d.get("primary_key", [])),
            foreign_keys=[tuple(fk) for fk in d.get("foreign_keys", [])],
            rows=[list(r) for r in d.get("rows", [])],
            create_sql=d.get("create_sql"),
        )


@dataclass
class Example:
    """A Text2SQL example.

    db_path: SQLite file the gold SQL runs on. In a JSONL record it is relative to the folder
        of the JSONL file (or absolute); evaluate resolves it that way.
    table:   for WikiSQL, the one table the question is about.
    group:   the split key (WikiSQL table id, Spider db_id): no group is in two splits.
    meta:    source-specific extras (Spider hardness, original ids, ...).
    """

    question: str
    sql: str
    tables: list[Table]
    source: str
    db_path: str | None = None
    table: str | None = None
    db_id: str | None = None
    id: str | None = None
    group: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def split_key(self) -> str:
        return self.group or self.db_id or self.table or self.id or self.question
