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
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterable

from ..errors import InputError
from ..example import Column, Example, Table
from ..prompts import quote_ident
from . import SourceOptions
from .common import (Problems, SourceResult, Where, check_type, describe, is_number,
                     iter_records, require)

AGG_OPS = ["", "MAX", "MIN", "COUNT", "SUM", "AVG"]
COND_OPS = ["=", ">", "<", "OP"]
COLUMN_TYPES = {"text": "TEXT", "real": "REAL"}

# Identifies databases this module wrote (PRAGMA application_id), and changes whenever the
# way tables are built changes so old files are rebuilt instead of reused.
_APPLICATION_ID = 0x74327351  # "t2sQ"
_BUILDER_VERSION = 1

# Official engine's fallback: the first number in the text (it never matches a sign before
# an integer, and neither do we).
_FIRST_NUMBER = re.compile(r"[-+]?\d*\.\d+|\d+")


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


# --------------------------------------------------------------------------- logical form -> SQL

_SQLITE_NUMBER = re.compile(r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$")


def stored_value(value: Any, col_type: str) -> Any:
    """A cell as SQLite stores it in a column of this type (column affinity): numbers and
    numeric text in ``REAL`` columns become floats, numbers in ``TEXT`` columns text."""
    if value is None:
        return None
    if col_type == "real":
        if is_number(value):
            return float(value)
        return float(value) if _SQLITE_NUMBER.match(value) else value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return value


def official_number(text: str) -> float | None:
    """A condition value on a ``real`` column read as the official engine reads it:
    thousands separators dropped and parsed as a decimal, else the first number in the text,
    else None (the text is then compared as text)."""
    try:
        d = Decimal(text.replace(",", "").strip())
        if d.is_finite():
            return float(d)
    except (InvalidOperation, ValueError):
        pass
    m = _FIRST_NUMBER.search(text)
    return float(m.group()) if m else None


def number_literal(value: int | float, compact: bool = True) -> str:
    """A SQL numeric literal; with ``compact``, integral floats are written without '.0'."""
    if isinstance(value, int):
        return str(value)
    if compact and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def string_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def condition_literal(value: Any, col_type: str) -> str:
    """The SQL literal of a condition value on a column of ``col_type`` (see the module doc)."""
    if col_type == "real":
        if is_number(value):
            return number_literal(value)
        number = official_number(value)
        return number_literal(number) if number is not None else string_literal(value)
    if is_number(value):
        # Exact repr: SQLite turns the number into text (column affinity) the same way the
        # official engine's bound parameter is, '3.0' stays '3.0'.
        return number_literal(value, compact=False)
    return string_literal(value)


def normalize_logical_form(sql: Any, where: Where) -> dict:
    """``{"sel": int, "agg": int, "conds": [[col, op, value], ...]}`` from either the official
    shape or Hugging Face's (``conds`` as ``column_index``/``operator_index``/``condition``)."""
    if not isinstance(sql, dict):
        raise where.error(f"field 'sql' must be an object, got {describe(sql)}")
    sel = require(sql, "sel", int, where)
    agg = require(sql, "agg", int, where)
    conds = sql.get("conds", [])
    if isinstance(conds, dict):  # Hugging Face datasets layout
        cols = require(conds, "column_index", list, where)
        ops = require(conds, "operator_index", list, where)
        vals = require(conds, "condition", list, where)
        if not len(cols) == len(ops) == len(vals):
            raise where.error("sql.conds: column_index, operator_index and condition differ in length")
        conds = [list(c) for c in zip(cols, ops, vals)]
    if not isinstance(conds, list):
        raise where.error(f"field 'conds' must be a list, got {describe(conds)}")
    out = []
    for cond in conds:
        if not isinstance(cond, (list, tuple)) or len(cond) != 3:
            raise where.error(f"a condition must be [column, operator, value], got {describe(cond)}")
        col, op, value = cond
        check_type(col, "conds column", int, where)
        check_type(op, "conds operator", int, where)
        check_type(value, "conds value", (str, int, float), where)
        if isinstance(value, float) and not math.isfinite(value):
            raise where.error(f"condition value {value!r} is not a finite number")
        out.append([col, op, value])
    return {"sel": sel, "agg": agg, "conds": out}


def logical_form_to_sql(lf: dict, table: WikiTable, where: Where) -> str:
    """SQLite SQL for a normalized logical form over ``table`` (see the module docstring)."""
    n = len(table.columns)
    sel, agg = lf["sel"], lf["agg"]
    if not 0 <= sel < n:
        raise where.error(f"select column index {sel} is out of range: table {table.id!r} has {n} columns")
    if not 0 <= agg < len(AGG_OPS):
        raise where.error(f"unknown aggregation index {agg} (expected 0-5: none, MAX, MIN, COUNT, SUM, AVG)")
    column = quote_ident(table.columns[sel])
    select = f"{AGG_OPS[agg]}({column})" if agg else column
    parts = []
    for col, op, value in lf["conds"]:
        if not 0 <= col < n:
            raise where.error(f"condition column index {col} is out of range: table {table.id!r} has {n} columns")
        if not 0 <= op < 3:
            raise where.error(f"unknown condition operator index {op} (expected 0-2: =, >, <)")
        if op == 0 and isinstance(value, str) and table.types[col] == "text" and not value.isascii():
            value = table.spelling(col, value)
        parts.append(f"{quote_ident(table.columns[col])} {COND_OPS[op]} "
                     f"{condition_literal(value, table.types[col])}")
    sql = f"SELECT {select} FROM {quote_ident(table.name)}"
    if parts:
        sql += " WHERE " + " AND ".join(parts)
    return sql


# --------------------------------------------------------------------------- database

def tables_fingerprint(tables: Iterable[WikiTable]) -> str:
    h = hashlib.sha256(f"wikisql-db-v{_BUILDER_VERSION}".encode())
    for t in tables:
        h.update(json.dumps([t.id, t.name, t.columns, t.types, t.rows], ensure_ascii=False,
                            separators=(",", ":")).encode("utf-8"))
    return h.hexdigest()


def _fingerprint_version(fingerprint: str) -> int:
    return int(fingerprint[:7], 16)  # 28 bits: fits PRAGMA user_version (a signed 32-bit int)


def database_is_current(path: Path, fingerprint: str, n_tables: int) -> bool:
    """True when ``path`` is a database this module built from exactly these tables."""
    if not path.is_file():
        return False
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            app = conn.execute("PRAGMA application_id").fetchone()[0]
            ver = conn.execute("PRAGMA user_version").fetchone()[0]
            count = conn.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    return app == _APPLICATION_ID and ver == _fingerprint_version(fingerprint) and count == n_tables


def create_table_sql(table: WikiTable) -> str:
    cols = []
    for name, t in zip(table.columns, table.types):
        decl = "TEXT COLLATE NOCASE" if t == "text" else "REAL"
        cols.append(f"{quote_ident(name)} {decl}")
    return f"CREATE TABLE {quote_ident(table.name)} ({', '.join(cols)})"


def build_database(path: str | Path, tables: list[WikiTable], fingerprint: str | None = None) -> None:
    """Write every table (all rows) into a new SQLite file at ``path``."""
    fingerprint = fingerprint or tables_fingerprint(tables)
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute(f"PRAGMA application_id={_APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version={_fingerprint_version(fingerprint)}")
        for t in tables:
            conn.execute(create_table_sql(t))
            if t.rows:
                marks = ", ".join("?" * len(t.columns))
                conn.executemany(f"INSERT INTO {quote_ident(t.name)} VALUES ({marks})", t.rows)
        conn.commit()
    finally:
        conn.close()


# --------------------------------------------------------------------------- reading


class _Reader:
    """State shared while reading one dataset: known tables and their SQL names."""

    def __init__(self, options: SourceOptions, problems: Problems):
        self.options = options
        self.problems = problems
        self.tables: dict[str, WikiTable] = {}
        self.bad_tables: dict[str, InputError] = {}
        self.used_names: dict[str, str] = {}  # lower-case SQL name -> table id
        self.prompt_tables: dict[str, Table] = {}

    def add_table(self, raw: Any, where: Where) -> WikiTable | None:
        try:
            table = parse_table(raw, where)
        except InputError as e:
            tid = raw.get("id") if isinstance(raw, dict) else None
            if isinstance(tid, str):
                self.bad_tables[tid] = e
            self.problems.add(e)
            return None
        known = self.tables.get(table.id)
        if known is not None:
            if (known.columns, known.types, known.rows) != (table.columns, table.types, table.rows):
                self.problems.add(where.error(
                    f"table id {table.id!r} is already defined differently at {known.where}"))
            return known
        # Two ids that differ only in characters the name replaces must not share a table.
        name, k = table.name, 2
        while name.lower() in self.used_names:
            name = f"{table.name}_{k}"
            k += 1
        table.name = name
        self.used_names[name.lower()] = table.id
        self.tables[table.id] = table
        return table

    def load_tables_file(self, path: Path) -> None:
        for where, raw in iter_records(path, self.problems):
            self.add_table(raw, where)

    def example(self, rec: dict, where: Where, split: str, index: int | str,
                table: WikiTable | None = None) -> Example:
        question = require(rec, "question", str, where, nonempty=True)
        if table is None:
            table_id = require(rec, "table_id", str, where, nonempty=True)
            table = self.tables.get(table_id)
            if table is None:
                if table_id in self.bad_tables:
                    raise where.error(f"table {table_id!r} is unusable ({self.bad_tables[table_id]})")
                raise where.error(f"table id {table_id!r} is not in the tables file")
        lf = normalize_logical_form(require(rec, "sql", dict, where), where)
        sql = logical_form_to_sql(lf, table, where)
        prompt_table = self.prompt_tables.get(table.id)
        if prompt_table is None:
            prompt_table = self.prompt_tables[table.id] = table.to_table(self.options.sample_rows)
        meta: dict[str, Any] = {"table_id": table.id, "split": split, "logical_form": lf,
                                "has_rows": bool(table.rows)}
        if isinstance(rec.get("phase"), int):
            meta["phase"] = rec["phase"]
        return Example(
            question=" ".join(question.split()),
            sql=sql,
            tables=[prompt_table],
            source="wikisql",
            db_path=str(Path(self.options.out_dir, self.options.db_name).resolve()),
            table=table.name,
            db_id=None,
            id=f"{split}-{index}",
            group=table.id,
            meta=meta,
        )

    def finish(self, splits: dict[str, list[Example]]) -> SourceResult:
        result = SourceResult(splits)
        used_ids = []
        seen = set()
        for examples in splits.values():
            for ex in examples:
                if ex.group not in seen:
                    seen.add(ex.group)
                    used_ids.append(ex.group)
        used = [self.tables[i] for i in used_ids]
        final = Path(self.options.out_dir, self.options.db_name)
        fingerprint = tables_fingerprint(used)
        if not used:
            for examples in splits.values():
                for ex in examples:
                    ex.db_path = None
        elif database_is_current(final, fingerprint, len(used)):
            result.notes.append(f"reused up-to-date database {final}")
        else:
            tmp = result.staging.path_for(final)
            build_database(tmp, used, fingerprint)
            result.notes.append(f"built database {final} ({len(used)} tables)")
        return result


def _progress(iterable, desc: str, options: SourceOptions, total: int | None = None):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit=" q", total=total, disable=not options.progress,
                leave=False, dynamic_ncols=True)


def _split_order(name: str) -> tuple[int, str]:
    return ({"train": 0, "dev": 1, "validation": 1, "valid": 1, "test": 2}.get(name, 3), name)


def find_split_files(input_path: Path, tables: str | None = None) -> list[tuple[str, Path, Path]]:
    """``(split, questions file, tables file)`` for a WikiSQL folder or one questions file."""
    if input_path.is_dir():
        found = []
        for q in sorted(input_path.glob("*.jsonl")):
            if q.name.endswith(".tables.jsonl"):
                continue
            t = Path(tables) if tables else q.with_name(q.stem + ".tables.jsonl")
            if t.is_file():
                found.append((q.stem, q, t))
        if not found:
            raise InputError("no WikiSQL question files here: expected {split}.jsonl next to "
                             "{split}.tables.jsonl (e.g. dev.jsonl + dev.tables.jsonl)", str(input_path))
        return sorted(found, key=lambda f: _split_order(f[0]))
    if input_path.is_file():
        stem = input_path.name[: -len(".jsonl")] if input_path.name.endswith(".jsonl") else input_path.stem
        t = Path(tables) if tables else input_path.with_name(stem + ".tables.jsonl")
        if not t.is_file():
            raise InputError(f"tables file {t} not found (give it with --tables)", str(input_path))
        return [(stem, input_path, t)]
    raise InputError("no such file or folder", str(input_path))


def read(input_path: str, options: SourceOptions, problems: Problems) -> SourceResult:
    """Convert a WikiSQL folder (every ``{split}.jsonl`` with its ``{split}.tables.jsonl``) or
    one questions file; builds the database in ``options.out_dir``."""
    reader = _Reader(options, problems)
    files = find_split_files(Path(input_path), options.tables)
    for tables_file in dict.fromkeys(t for _, _, t in files):
        reader.load_tables_file(tables_file)
    splits: dict[str, list[Example]] = {}
    for split, qfile, _ in files:
        out = splits.setdefault(split, [])
        for where, rec in _progress(iter_records(qfile, problems), f"wikisql {split}", options):
            if options.limit is not None and len(out) >= options.limit:
                break
            try:
                out.append(reader.example(rec, where, split, where.line))
            except InputError as e:
                problems.add(e)
    return reader.finish(splits)


def read_hf(splits: dict[str, Iterable[dict]], options: SourceOptions, problems: Problems,
            name: str = "hf") -> SourceResult:
    """Convert Hugging Face ``wikisql`` records (each embeds its ``table``); records in the
    original shape (``table_id``) need ``options.tables``."""
    reader = _Reader(options, problems)
    if options.tables:
        reader.load_tables_file(Path(options.tables))
    out_splits: dict[str, list[Example]] = {}
    for split, records in splits.items():
        out = out_splits.setdefault(split, [])
        for i, rec in enumerate(_progress(records, f"wikisql {split}", options)):
            if options.limit is not None and len(out) >= options.limit:
                break
            where = Where(f"{name}[{split}]", i + 1)
            try:
                table = None
                if isinstance(rec, dict) and "table" in rec:
                    raw = rec["table"]
                    if not isinstance(raw, dict):
                        raise where.error(f"field 'table' must be an object, got {describe(raw)}")
                    table = reader.add_table(raw, where)
                    if table is None:
                        continue  # already reported
                out.append(reader.example(rec, where, split, i, table))
            except InputError as e:
                problems.add(e)
    return reader.finish(out_splits)
