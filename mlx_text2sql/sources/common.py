"""Pieces every dataset converter shares, under one import path.

They live in their own modules: :mod:`.reading` (reading records, :class:`Problems`,
:func:`require`), :mod:`.staging` (:class:`Staging`, :class:`SourceResult`),
:mod:`.schema_text` (CREATE TABLE text -> tables), :mod:`.databases` (SQLite files) and
:mod:`.schema_only` (:class:`SchemaOnlyBuilder`).

Pure Python: no MLX import.
"""

from __future__ import annotations

from .databases import (connect_readonly, create_empty_database, is_sqlite_database, quote_name,
                        relative_db_path, tables_from_database, tables_in_sql)
from .reading import Problems, Where, check_type, describe, is_number, iter_records, require
from .schema_only import SchemaOnlyBuilder
from .schema_text import (merge_tables, parse_create_table, parse_schema_text, quiet_sqlglot,
                          schema_ddl, schema_key, split_create_statements)
from .staging import SourceResult, Staging

__all__ = [
    "Problems", "SchemaOnlyBuilder", "SourceResult", "Staging", "Where", "check_type",
    "connect_readonly", "create_empty_database", "describe", "is_number", "is_sqlite_database",
    "iter_records", "merge_tables", "parse_create_table", "parse_schema_text", "quiet_sqlglot",
    "quote_name", "relative_db_path", "require", "schema_ddl", "schema_key",
    "split_create_statements", "tables_from_database", "tables_in_sql",
]
