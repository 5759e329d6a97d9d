"""Spider (taoyds/spider) to Examples.

Input: a Spider folder (``train_spider.json``, ``train_others.json``, ``dev.json``,
``test.json``; ``tables.json`` / ``test_tables.json``; ``database/<db>/<db>.sqlite`` /
``test_database/...``), or one questions file with ``tables.json`` beside it.

The schema uses the original table and column names, with types (the database's declared
types when the SQLite file is there, else tables.json's coarse ones), primary and foreign
keys, and sample rows read from the database. A database file that is missing or empty
(Spider's dev ``wta_1`` is sometimes shipped empty) gives ``db_path = null``.

``meta["hardness"]`` is Spider's official difficulty (easy / medium / hard / extra), computed
from the record's parsed ``sql`` field by :func:`hardness`, our implementation of the rules
published with Spider's evaluation script.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Iterable

from ..errors import ConfigError, InputError
from ..example import Column, Example, Table
from ..prompts import quote_ident
from . import SourceOptions
from .databases import connect_readonly, is_sqlite_database
from .reading import Problems, Where, check_type, describe, iter_records, require
from .staging import SourceResult

# tables.json's column types, for when the database cannot tell the declared type.
SPIDER_TYPES = {"text": "TEXT", "number": "NUMERIC", "time": "DATETIME", "boolean": "BOOLEAN",
                "others": "TEXT"}

# Official split files and the split name each belongs to.
SPLIT_FILES = [("train_spider.json", "train"), ("train_others.json", "train"),
               ("dev.json", "dev"), ("test.json", "test")]


# --------------------------------------------------------------------------- hardness

_AGG_NONE = 0      # index of 'none' in Spider's AGG_OPS
_WHERE_LIKE = 9    # index of 'like' in Spider's WHERE_OPS


def _conditions(clause: list) -> list:
    """Condition units of a where/having/from-conds list ([cond, 'and', cond, ...])."""
    return clause[::2]


def _connectors(clause: list) -> list:
    return clause[1::2]


def hardness(sql: dict) -> str:
    """Spider's difficulty level of a parsed query: "easy", "medium", "hard" or "extra".

    Follows the published rules: count (1) structural components (WHERE, GROUP BY, ORDER BY,
    LIMIT, each extra joined table, each OR, each LIKE), (2) nested queries (subqueries in
    conditions, INTERSECT/UNION/EXCEPT) and (3) "others" (more than one aggregate, select item,
    WHERE condition or GROUP BY column), then map the three counts to a level.

    The published counter of aggregates reads the first element of each unit it is given,
    which for WHERE conditions is their NOT flag and for HAVING also counts the 'and'/'or'
    connectors; the official levels depend on that, so it is reproduced here.
    Raises ValueError (or KeyError/TypeError/IndexError) on a malformed structure.
    """
    c1 = _count_components(sql)
    c2 = len(_nested(sql))
    others = _count_others(sql)
    if c1 <= 1 and others == 0 and c2 == 0:
        return "easy"
    if (others <= 2 and c1 <= 1 and c2 == 0) or (c1 <= 2 and others < 2 and c2 == 0):
        return "medium"
    if ((others > 2 and c1 <= 2 and c2 == 0) or (2 < c1 <= 3 and others <= 2 and c2 == 0)
            or (c1 <= 1 and others == 0 and c2 <= 1)):
        return "hard"
    return "extra"


def _all_conditions(sql: dict) -> list:
    return (_conditions(sql["from"]["conds"]) + _conditions(sql["where"])
            + _conditions(sql["having"]))


def _count_components(sql: dict) -> int:
    n = sum(1 for present in (sql["where"], sql["groupBy"], sql["orderBy"]) if len(present) > 0)
    n += sql["limit"] is not None
    units = sql["from"]["table_units"]
    if len(units) > 0:
        n += len(units) - 1
    connectors = (_connectors(sql["from"]["conds"]) + _connectors(sql["where"])
                  + _connectors(sql["having"]))
    n += sum(1 for c in connectors if c == "or")
    n += sum(1 for cond in _all_conditions(sql) if cond[1] == _WHERE_LIKE)
    return n


def _nested(sql: dict) -> list:
    found = []
    for cond in _all_conditions(sql):
        found += [v for v in (cond[3], cond[4]) if isinstance(v, dict)]
    found += [sql[k] for k in ("intersect", "except", "union") if sql.get(k) is not None]
    return found


def _count_aggs(units: list) -> int:
    return sum(1 for u in units if u[0] != _AGG_NONE)


def _count_others(sql: dict) -> int:
    aggs = _count_aggs(sql["select"][1])
    aggs += _count_aggs(_conditions(sql["where"]))
    aggs += _count_aggs(sql["groupBy"])
    if len(sql["orderBy"]) > 0:
        val_units = sql["orderBy"][1]
        aggs += _count_aggs([v[1] for v in val_units if v[1]] + [v[2] for v in val_units if v[2]])
    aggs += _count_aggs(sql["having"])  # whole list, connectors included (see hardness())
    n = int(aggs > 1)
    n += len(sql["select"][1]) > 1
    n += len(sql["where"]) > 1
    n += len(sql["groupBy"]) > 1
    return n


# --------------------------------------------------------------------------- schema

class SpiderSchema:
    """One database of tables.json: tables with types and keys, its SQLite file if any."""

    def __init__(self, raw: dict, where: Where, databases: Path | None):
        self.where = where
        self.db_id = require(raw, "db_id", str, where, nonempty=True)
        names = require(raw, "table_names_original", list, where)
        for n in names:
            check_type(n, "table_names_original", str, where)
        columns = require(raw, "column_names_original", list, where)
        types = require(raw, "column_types", list, where)
        if len(types) != len(columns):
            raise where.error(f"database {self.db_id!r}: {len(types)} column types for {len(columns)} columns")
        self.tables = [Table(name=n) for n in names]
        self.column_of: list[tuple[int, str]] = []
        for col, ctype in zip(columns, types):
            if not (isinstance(col, list) and len(col) == 2 and isinstance(col[0], int)
                    and not isinstance(col[0], bool) and isinstance(col[1], str)):
                raise where.error(f"database {self.db_id!r}: a column must be [table index, name], got {describe(col)}")
            check_type(ctype, "column_types", str, where)
            t, name = col
            if t == -1:  # the '*' pseudo column
                self.column_of.append((-1, name))
                continue
            if not 0 <= t < len(self.tables):
                raise where.error(f"database {self.db_id!r}: column {name!r} names table index {t}, "
                                  f"out of range (0-{len(self.tables) - 1})")
            self.tables[t].columns.append(Column(name, SPIDER_TYPES.get(ctype.lower(), "TEXT")))
            self.column_of.append((t, name))

        def column(idx: Any) -> tuple[int, str]:
            if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < len(self.column_of) \
                    or self.column_of[idx][0] < 0:
                raise where.error(f"database {self.db_id!r}: key column index {describe(idx)} is out of range")
            return self.column_of[idx]

        for pk in require(raw, "primary_keys", list, where):
            for idx in pk if isinstance(pk, list) else [pk]:
                t, name = column(idx)
                self.tables[t].primary_key.append(name)
        for fk in require(raw, "foreign_keys", list, where):
            if not (isinstance(fk, list) and len(fk) == 2):
                raise where.error(f"database {self.db_id!r}: a foreign key must be [column, column], got {describe(fk)}")
            (t, name), (rt, rname) = column(fk[0]), column(fk[1])
            self.tables[t].foreign_keys.append((name, self.tables[rt].name, rname))
        # SQLite's own bookkeeping (sqlite_sequence) is listed in some schemas: not data.
        self.tables = [t for t in self.tables if not t.name.lower().startswith("sqlite_")]
        self.db_path: Path | None = None
        if databases is not None:
            p = databases / self.db_id / f"{self.db_id}.sqlite"
            if is_sqlite_database(p):
                self.db_path = p.resolve()
        self._rows_loaded = -1

    def prompt_tables(self, sample_rows: int) -> list[Table]:
        """The tables, with declared types and sample rows from the database when present."""
        if self._rows_loaded != sample_rows:
            self._rows_loaded = sample_rows
            if self.db_path is not None:
                self._read_database(sample_rows)
        return self.tables

    def _read_database(self, sample_rows: int) -> None:
        try:
            conn = connect_readonly(self.db_path)
        except sqlite3.Error:
            return
        try:
            for t in self.tables:
                try:
                    declared = {row[1].lower(): row[2] for row in
                                conn.execute(f"PRAGMA table_info({quote_ident(t.name)})")}
                except sqlite3.Error:
                    declared = {}
                for c in t.columns:
                    decl = (declared.get(c.name.lower()) or "").strip()
                    if decl:
                        c.type = decl.upper()
                t.rows = []
                if sample_rows > 0 and t.columns:
                    cols = ", ".join(quote_ident(c.name) for c in t.columns)
                    try:
                        t.rows = [list(r) for r in conn.execute(
                            f"SELECT {cols} FROM {quote_ident(t.name)} LIMIT {int(sample_rows)}")]
                    except sqlite3.Error:
                        t.rows = []
        finally:
            conn.close()


class _Reader:
    def __init__(self, options: SourceOptions, problems: Problems):
        self.options = options
        self.problems = problems
        self.schemas: dict[tuple[str, str], SpiderSchema] = {}  # (tables file, db_id) -> schema
        self.bad: dict[tuple[str, str], InputError] = {}
        self.no_hardness = 0

    def load_tables(self, path: Path, databases: Path | None) -> dict[str, SpiderSchema]:
        out: dict[str, SpiderSchema] = {}
        for where, raw in iter_records(path, self.problems):
            try:
                schema = SpiderSchema(raw, where, databases)
                out[schema.db_id] = schema
            except InputError as e:
                db_id = raw.get("db_id") if isinstance(raw, dict) else None
                if isinstance(db_id, str):
                    self.bad[(str(path), db_id)] = e
                self.problems.add(e)
        return out

    def example(self, rec: dict, where: Where, split: str, ex_id: str,
                schemas: dict[str, SpiderSchema], tables_file: str) -> Example:
        db_id = require(rec, "db_id", str, where, nonempty=True)
        question = require(rec, "question", str, where, nonempty=True)
        query = require(rec, "query", str, where, nonempty=True)
        schema = schemas.get(db_id)
        if schema is None:
            bad = self.bad.get((tables_file, db_id))
            if bad is not None:
                raise where.error(f"database {db_id!r} is unusable ({bad})")
            raise where.error(f"database {db_id!r} is not in {tables_file}")
        meta: dict[str, Any] = {"split": split, "has_rows": schema.db_path is not None}
        parsed = rec.get("sql")
        if isinstance(parsed, dict):
            try:
                meta["hardness"] = hardness(parsed)
            except (KeyError, TypeError, IndexError, ValueError, AttributeError):
                self.no_hardness += 1
        else:
            self.no_hardness += 1
        return Example(
            question=" ".join(question.split()),
            sql=single_quote_values(squash_whitespace(query), schema.tables).rstrip(";").strip(),
            tables=schema.prompt_tables(self.options.sample_rows),
            source="spider",
            db_path=str(schema.db_path) if schema.db_path else None,
            db_id=db_id,
            id=ex_id,
            group=db_id,
            meta=meta,
        )


def single_quote_values(sql: str, tables: Iterable[Table]) -> str:
    """Spider's gold writes many values in double quotes (``WHERE Airline = "JetBlue Airways"``),
    which SQLite reads as strings only while its double-quoted-string fallback is on; the
    executor turns it off (an unknown double-quoted column must be an error). A double-quoted
    token that names no table or column of the database is rewritten as a string literal, so
    the gold runs everywhere and a model trained on it writes values the standard way."""
    from ..sql.lexer import QUOTED, tokenize

    names = {t.name.lower() for t in tables}
    names |= {c.name.lower() for t in tables for c in t.columns}
    out = []
    for tok in tokenize(sql):
        if tok.kind == QUOTED and tok.text.startswith('"') and tok.closed and tok.value.lower() not in names:
            out.append("'" + tok.value.replace("'", "''") + "'")
        else:
            out.append(tok.text)
    return "".join(out)


def squash_whitespace(sql: str) -> str:
    """Runs of whitespace outside quotes become one space (Spider writes ``age  >  56``)."""
    out, quote, pending_space = [], None, False
    for ch in sql.strip():
        if quote:
            out.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch.isspace():
            pending_space = True
            continue
        if pending_space:
            out.append(" ")
            pending_space = False
        if ch in ("'", '"', "`"):
            quote = ch
        out.append(ch)
    return "".join(out)


def _progress(iterable, desc: str, options: SourceOptions):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit=" q", disable=not options.progress, leave=False,
                dynamic_ncols=True)


def find_files(input_path: Path, options: SourceOptions) -> list[tuple[str, Path, Path, Path | None]]:
    """``(split, questions file, tables file, databases folder)`` for a Spider folder or file."""
    def dbs(folder: Path, test: bool) -> Path | None:
        if options.databases:
            return Path(options.databases)
        for name in (["test_database"] if test else []) + ["database"]:
            if (folder / name).is_dir():
                return folder / name
        return None

    def tables_for(folder: Path, test: bool) -> Path:
        if options.tables:
            return Path(options.tables)
        if test and (folder / "test_tables.json").is_file():
            return folder / "test_tables.json"
        return folder / "tables.json"

    if input_path.is_dir():
        found = []
        for fname, split in SPLIT_FILES:
            q = input_path / fname
            if q.is_file():
                found.append((split, q, tables_for(input_path, split == "test"),
                              dbs(input_path, split == "test")))
        if not found:
            raise InputError("no Spider questions file here (expected train_spider.json, "
                             "train_others.json, dev.json or test.json)", str(input_path))
    elif input_path.is_file():
        split = {f: s for f, s in SPLIT_FILES}.get(input_path.name, input_path.stem)
        folder = input_path.parent
        found = [(split, input_path, tables_for(folder, split == "test"), dbs(folder, split == "test"))]
    else:
        raise InputError("no such file or folder", str(input_path))
    for _, q, t, _ in found:
        if not t.is_file():
            raise InputError(f"tables file {t} not found (give it with --tables)", str(q))
    return found


def read(input_path: str, options: SourceOptions, problems: Problems) -> SourceResult:
    """Convert a Spider folder (every official split file found) or one questions file."""
    reader = _Reader(options, problems)
    loaded: dict[tuple[str, str | None], dict[str, SpiderSchema]] = {}
    result = SourceResult({})
    for split, qfile, tfile, dbdir in find_files(Path(input_path), options):
        key = (str(tfile), str(dbdir) if dbdir else None)
        if key not in loaded:
            loaded[key] = reader.load_tables(tfile, dbdir)
        out = result.splits.setdefault(split, [])
        count = 0
        for i, (where, rec) in enumerate(_progress(iter_records(qfile, problems), f"spider {qfile.stem}", options)):
            if options.limit is not None and count >= options.limit:
                break
            try:
                out.append(reader.example(rec, where, split, f"{qfile.stem}-{i}", loaded[key],
                                          str(tfile)))
                count += 1
            except InputError as e:
                problems.add(e)
    _notes(reader, loaded.values(), result)
    return result


def _notes(reader: _Reader, schema_sets: Iterable[dict[str, SpiderSchema]], result: SourceResult) -> None:
    used = {ex.db_id for exs in result.splits.values() for ex in exs}
    missing = sorted({s.db_id for schemas in schema_sets for s in schemas.values()
                      if s.db_path is None and s.db_id in used})
    if missing:
        result.notes.append(f"no SQLite file (or an empty one) for {len(missing)} databases, their "
                            f"examples cannot execute: {', '.join(missing)}")
    if reader.no_hardness:
        result.notes.append(f"{reader.no_hardness} records without a usable parsed 'sql' field: "
                            "no hardness level for them")


def read_hf(splits: dict[str, Iterable[dict]], options: SourceOptions, problems: Problems,
            name: str = "hf") -> SourceResult:
    """Convert Spider records loaded with ``datasets``. The Hub's copies carry no schema, so
    ``options.tables`` (tables.json) is required; ``options.databases`` enables execution."""
    if not options.tables:
        raise ConfigError("Spider records from a dataset carry no schema: give --tables "
                          "path/to/tables.json (and --databases path/to/database for execution)")
    reader = _Reader(options, problems)
    dbdir = Path(options.databases) if options.databases else None
    schemas = reader.load_tables(Path(options.tables), dbdir)
    result = SourceResult({})
    for split, records in splits.items():
        out = result.splits.setdefault(split, [])
        for i, rec in enumerate(_progress(records, f"spider {split}", options)):
            if options.limit is not None and len(out) >= options.limit:
                break
            where = Where(f"{name}[{split}]", i + 1)
            try:
                out.append(reader.example(rec, where, split, f"{split}-{i}", schemas, options.tables))
            except InputError as e:
                problems.add(e)
    _notes(reader, [schemas], result)
    return result
