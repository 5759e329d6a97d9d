"""Fitting an example's schema into a token budget (``--max-tokens``).

Pure Python: no MLX import.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from ..example import Example, Table
from ..prompts import build_messages, render_schema
from ..sources.databases import tables_in_sql

# --max-tokens for valid/test records: the prompt alone plus this much room for the answer (the
# gold SQL's own length must not shape an evaluation prompt)
ANSWER_RESERVE = 96


@dataclass
class Fitted:
    tables: list[Table]
    sample_rows: int
    schema: str
    dropped_tables: list[str] = field(default_factory=list)


def _without(tables: list[Table], drop: set[str]) -> list[Table]:
    """Tables not in ``drop``, with foreign keys into dropped tables removed."""
    out = []
    for t in tables:
        if t.name in drop:
            continue
        fks = [fk for fk in t.foreign_keys if fk[1] not in drop]
        out.append(t if len(fks) == len(t.foreign_keys) else replace(t, foreign_keys=fks))
    return out


def fit_schema(ex: Example, sample_rows: int, max_tokens: int | None,
               count: Callable[[list[dict]], int], hints: str | None = None, *,
               use_gold: bool = True, drop_order: list[str] | None = None) -> tuple[Fitted, bool] | None:
    """The schema to show for ``ex`` within ``max_tokens`` (prompt + SQL), and whether it was
    trimmed. Trims the schema only, never the SQL or the question: first drops tables (last
    ones first, or in ``drop_order``), then lowers the sample rows of every table down to none.
    Returns None when even that does not fit.

    ``use_gold``: never drop a table the gold SQL uses. Only training records may do that;
    evaluation records are trimmed from the question and the database alone, as at inference
    (a prompt chosen with the answer in hand would score a model on a schema it never gets):
    their budget is the prompt plus ``ANSWER_RESERVE`` tokens, whatever the gold SQL's length."""
    def tokens(tables: list[Table], rows: int) -> tuple[int, str]:
        schema = render_schema(tables, rows)
        if not use_gold:
            return count(build_messages(ex.question, schema, None, hints=hints)) + ANSWER_RESERVE, schema
        return count(build_messages(ex.question, schema, ex.sql, hints=hints)), schema

    schema = render_schema(ex.tables, sample_rows)
    if max_tokens is None:
        return Fitted(ex.tables, sample_rows, schema), False
    n, schema = tokens(ex.tables, sample_rows)
    if n <= max_tokens:
        return Fitted(ex.tables, sample_rows, schema), False
    used = tables_in_sql(ex.sql, ex.tables) if use_gold else set()
    dropped: list[str] = []
    tables = ex.tables
    order = drop_order if drop_order is not None else [t.name for t in reversed(ex.tables)]
    # at least one table stays
    for name in order[:-1] if not used else order:
        if name in used or name in dropped:
            continue
        dropped.append(name)
        tables = _without(ex.tables, set(dropped))
        n, schema = tokens(tables, sample_rows)
        if n <= max_tokens:
            return Fitted(tables, sample_rows, schema, dropped), True
    for rows in range(sample_rows - 1, -1, -1):
        n, schema = tokens(tables, rows)
        if n <= max_tokens:
            return Fitted(tables, rows, schema, dropped), True
    return None
