"""WikiSQL (salesforce/WikiSQL) to Examples whose SQL runs on a SQLite database we build.

Input: a folder with ``{split}.jsonl`` (``table_id``, ``question``, ``sql{sel, agg, conds}``)
and ``{split}.tables.jsonl`` (``id``, ``header``, ``types``, ``rows``), or one such question
file; or Hugging Face ``wikisql`` records, which embed the table and store ``conds`` as three
parallel lists.

How the logical form becomes SQL, and why it returns the official answer:

- ``agg`` indexes ``["", "MAX", "MIN", "COUNT", "SUM", "AVG"]``, a condition's operator
  ``["=", ">", "<", "OP"]`` (``OP`` is a placeholder no record uses; it is rejected).
- Table ids like ``1-10015132-11`` are not identifiers: the table is named as in the official
  database, ``table_1_10015132_11``, and every name is double-quoted. Columns keep their real
  header text; an empty header becomes ``col<i>`` and a duplicate (SQLite names are
  case-insensitive) gets `` (2)``, `` (3)``, ... so every column is distinct and addressable.
- Questions are lower-cased while cells keep their case, and the official engine lower-cases
  both sides: text columns are declared ``TEXT COLLATE NOCASE``, so ``= 'l5506'`` matches
  ``L5506`` (and so does a model that copies the value from the question). NOCASE folds ASCII
  letters only: an equality value that differs from a cell only in the case of other letters
  ('český' vs 'Český') is written as the cell spells it.
- ``real`` columns hold numbers; the official engine turns a condition value on a ``real``
  column into a number (thousands separators removed: ``'24,637'`` -> ``24637``; failing that,
  the first number in the text; failing that, the text itself) and we write that number as the
  SQL literal. On a ``text`` column the value stays text, so ``>``/``<`` compare as text
  (``'9' > '10'``) exactly as in the official engine, even when the cells look numeric; a
  numeric value on a text column is written as a number and SQLite's column affinity turns it
  into text, again as the official engine's bound parameter is.
- One official quirk we do not copy: its engine binds one parameter per column, so two
  conditions on the same column both compare against the last value. Our SQL keeps both
  values (what the question says); ``tests/test_convert_wikisql.py`` shows the difference.
  (No record of the dev split has two conditions on one column.)

The database (one file, every table the examples use) is written to ``out_dir/db_name``; it is
reused when its stored fingerprint of the tables matches, and replaced atomically otherwise.

The package: :mod:`.tables` (the tables file, validated), :mod:`.logical_form` (logical form ->
SQL), :mod:`.database` (the SQLite file) and :mod:`.reader` (``read``, ``read_hf``).
"""

from __future__ import annotations

from .database import (build_database, create_table_sql, database_is_current,
                       tables_fingerprint)
from .logical_form import (AGG_OPS, COND_OPS, condition_literal, logical_form_to_sql,
                           normalize_logical_form, number_literal, official_number,
                           stored_value, string_literal)
from .reader import _Reader, find_split_files, read, read_hf  # noqa: F401 (_Reader: tests)
from .tables import COLUMN_TYPES, WikiTable, column_names, parse_table, table_sql_name

__all__ = [
    "AGG_OPS", "COLUMN_TYPES", "COND_OPS", "WikiTable", "build_database", "column_names",
    "condition_literal", "create_table_sql", "database_is_current", "find_split_files",
    "logical_form_to_sql", "normalize_logical_form", "number_literal", "official_number",
    "parse_table", "read", "read_hf", "stored_value", "string_literal", "table_sql_name",
    "tables_fingerprint",
]
