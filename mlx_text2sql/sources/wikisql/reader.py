"""Reading WikiSQL question files (or Hugging Face ``wikisql`` records) into Examples.

Pure Python: no MLX import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from ...errors import InputError
from ...example import Example, Table
from .. import SourceOptions
from ..reading import Problems, Where, describe, iter_records, require
from ..staging import SourceResult
from .database import build_database, database_is_current, tables_fingerprint
from .logical_form import logical_form_to_sql, normalize_logical_form
from .tables import WikiTable, parse_table

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
