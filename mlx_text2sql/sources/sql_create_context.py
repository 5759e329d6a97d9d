"""sql-create-context (b-mc2) to Examples: ``question``, ``context`` (CREATE TABLE statements
joined by '; '), ``answer`` (the SQL, sometimes wrapped as ``[SQL] ... [/SQL]``).

There is no data: the schema is parsed into Tables with sqlglot (so it renders like every
other source) and, unless ``build_db`` is off, an empty SQLite database is created per
distinct schema so the gold SQL can be checked to run (``meta["has_rows"]`` is False).
Examples are grouped for splitting by schema, so no schema is in two splits.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from ..errors import InputError
from . import SourceOptions
from .reading import Problems, Where, iter_records, require
from .schema_only import SchemaOnlyBuilder
from .staging import SourceResult

_WRAPPED = re.compile(r"^\s*\[SQL\]\s*(.*?)\s*\[/SQL\]\s*$", re.S | re.I)


def unwrap_answer(answer: str) -> str:
    """The SQL of an ``answer``, without a ``[SQL] ... [/SQL]`` wrapper or a final ';'."""
    m = _WRAPPED.match(answer)
    sql = (m.group(1) if m else answer).strip()
    return sql.rstrip(";").strip()


def input_files(input_path: Path) -> list[tuple[str, Path]]:
    """``(name, file)`` pairs: the file itself, or every .jsonl/.json file of a folder."""
    if input_path.is_file():
        return [(input_path.stem, input_path)]
    if input_path.is_dir():
        files = sorted(p for p in input_path.iterdir()
                       if p.suffix.lower() in (".jsonl", ".json") and p.is_file())
        if not files:
            raise InputError("no .jsonl or .json files in this folder", str(input_path))
        return [(p.stem, p) for p in files]
    raise InputError("no such file or folder", str(input_path))


def _progress(iterable, desc: str, options: SourceOptions):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit=" q", disable=not options.progress, leave=False,
                dynamic_ncols=True)


def _example(builder: SchemaOnlyBuilder, rec: dict, where: Where, ex_id: str, split: str):
    question = require(rec, "question", str, where, nonempty=True)
    context = require(rec, "context", str, where, nonempty=True)
    sql = unwrap_answer(require(rec, "answer", str, where, nonempty=True))
    if not sql:
        raise where.error("field 'answer' holds no SQL")
    return builder.example(question=question, sql=sql, schema_text=context, where=where,
                           ex_id=ex_id, meta={"split": split})


def read_schema_only(source: str, example, named: Iterable[tuple[str, Iterable[tuple[Where, dict]]]],
                     options: SourceOptions, problems: Problems) -> SourceResult:
    """Read (split, records) pairs of a source whose records carry their schema as text:
    ``example(builder, rec, where, ex_id, split)`` turns one record into an example (raising
    InputError for a bad one, which is counted in ``problems``); at most ``options.limit`` per
    split, with a progress bar named ``source``."""
    result = SourceResult({})
    builder = SchemaOnlyBuilder(source, options.out_dir, options.build_db, result.staging)
    for split, records in named:
        out = result.splits.setdefault(split, [])
        for where, rec in _progress(records, f"{source} {split}", options):
            if options.limit is not None and len(out) >= options.limit:
                break
            try:
                out.append(example(builder, rec, where, f"{split}-{where.line}", split))
            except InputError as e:
                problems.add(e)
    result.notes.extend(builder.notes())
    return result


def _read_records(named: Iterable[tuple[str, Iterable[tuple[Where, dict]]]],
                  options: SourceOptions, problems: Problems) -> SourceResult:
    return read_schema_only("sql-create-context", _example, named, options, problems)


def read_files(input_path: str, read_records, options: SourceOptions, problems: Problems) -> SourceResult:
    """Run ``read_records`` over every JSONL / JSON-array file of ``input_path`` (file or folder)."""
    files = input_files(Path(input_path))
    return read_records(((name, iter_records(path, problems)) for name, path in files), options, problems)


def hf_splits(splits: dict[str, Iterable[dict]], name: str):
    """``datasets`` splits as (split, ((Where, record), ...)) pairs, records numbered from 1."""
    return ((split, ((Where(f"{name}[{split}]", i + 1), rec) for i, rec in enumerate(records)))
            for split, records in splits.items())


def read(input_path: str, options: SourceOptions, problems: Problems) -> SourceResult:
    """Convert a sql-create-context file (JSONL, or the original JSON array) or a folder of them."""
    return read_files(input_path, _read_records, options, problems)


def read_hf(splits: dict[str, Iterable[dict]], options: SourceOptions, problems: Problems,
            name: str = "hf") -> SourceResult:
    """Convert ``b-mc2/sql-create-context`` records loaded with ``datasets``."""
    return _read_records(hf_splits(splits, name), options, problems)
