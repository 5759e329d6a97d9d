"""WikiSQL tables-file records, validated, with SQL-safe distinct names.

Pure Python: no MLX import.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ...example import Column, Table
from ..reading import Where, check_type, describe, is_number, require
from .logical_form import stored_value

COLUMN_TYPES = {"text": "TEXT", "real": "REAL"}


@dataclass
class WikiTable:
    """One WikiSQL table, validated, with SQL-safe distinct names."""

    id: str
    name: str          # SQL table name, e.g. table_1_10015132_11
    columns: list[str]  # distinct column names (the headers, repaired where needed)
    types: list[str]    # "text" / "real", per column
    rows: list[list[Any]]
    where: Where

    def spelling(self, col: int, value: str) -> str:
        """``value`` as written in the table when only a non-ASCII case difference separates
        them ('český' vs 'Český'): SQLite's NOCASE folds ASCII letters only, while the
        official engine lower-cases everything. Otherwise ``value`` unchanged."""
        folded = _ascii_fold(value)
        cells = [c for c in (row[col] for row in self.rows) if isinstance(c, str)]
        if any(_ascii_fold(c) == folded for c in cells):
            return value
        lowered = value.lower()
        for c in cells:
            if c.lower() == lowered:
                return c
        return value

    def to_table(self, sample_rows: int) -> Table:
        """The prompt's view of the table: sample rows as the database stores them (a ``real``
        cell 21 reads back as 21.0), so the prompt equals one built from the database file."""
        return Table(
            name=self.name,
            columns=[Column(c, COLUMN_TYPES[t]) for c, t in zip(self.columns, self.types)],
            rows=[[stored_value(v, t) for v, t in zip(r, self.types)]
                  for r in self.rows[: max(sample_rows, 0)]],
        )


def _ascii_fold(text: str) -> str:
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def table_sql_name(table_id: str) -> str:
    """The official database's name for a table id: ``1-10015132-11`` -> ``table_1_10015132_11``."""
    return "table_" + re.sub(r"[^0-9A-Za-z_]", "_", table_id)


def column_names(header: list[str]) -> list[str]:
    """Distinct, non-empty column names from a header, keeping the original text where
    possible (SQLite compares names case-insensitively, so duplicates are found that way)."""
    names: list[str] = []
    seen: set[str] = set()
    for i, h in enumerate(header):
        base = h.replace("\x00", "").strip() or f"col{i}"
        name, k = base, 2
        while name.lower() in seen:
            name = f"{base} ({k})"
            k += 1
        seen.add(name.lower())
        names.append(name)
    return names


def parse_table(raw: Any, where: Where) -> WikiTable:
    """Validate one tables-file record (``id``, ``header``, ``types``, ``rows``)."""
    table_id = require(raw, "id", str, where, nonempty=True)
    header = require(raw, "header", list, where)
    if not header:
        raise where.error(f"table {table_id!r} has no columns")
    for h in header:
        check_type(h, "header", str, where)
    types = require(raw, "types", list, where)
    if len(types) != len(header):
        raise where.error(f"table {table_id!r}: {len(types)} types for {len(header)} header names")
    norm_types = []
    for t in types:
        t = check_type(t, "types", str, where).strip().lower()
        if t not in COLUMN_TYPES:
            raise where.error(f"table {table_id!r}: unknown column type {t!r} (expected text or real)")
        norm_types.append(t)
    rows = require(raw, "rows", list, where)
    for r, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(header):
            raise where.error(f"table {table_id!r}: row {r} must be a list of {len(header)} cells, got {describe(row)}")
        for cell in row:
            if not (cell is None or isinstance(cell, str) or is_number(cell)):
                raise where.error(f"table {table_id!r}: row {r} has a cell that is not text or a number: {describe(cell)}")
            if isinstance(cell, float) and not math.isfinite(cell):
                raise where.error(f"table {table_id!r}: row {r} has a non-finite number")
    return WikiTable(table_id, table_sql_name(table_id), column_names(header), norm_types, rows, where)
