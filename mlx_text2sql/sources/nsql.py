"""NSQL-style instruction records to Examples. Two shapes are accepted:

- NumbersStation NSQL: ``instruction`` = CREATE TABLE statements, the line
  ``-- Using valid SQLite, answer the following questions for the tables provided above.``,
  then ``-- <question>``; ``output`` = the SQL; ``source`` = the original dataset.
- DB-GPT-Hub: ``instruction`` (which may end in ``SELECT``), ``input`` (the question, often
  as ``###Input:\\n...\\n\\n###Response:``), ``output`` (the SQL, or its continuation after
  the prompt's ``SELECT``), ``history``, ``db_id``. Its schema may be CREATE TABLE text or
  its own sentences: "Table head has columns such as head_ID, name. head_ID is the primary
  key." plus "The x of a is the foreign key of y of b." (read into Tables; their columns
  carry no type in that text, so they are declared TEXT).

As for sql-create-context there is no data: an empty SQLite database per distinct schema lets
the gold SQL be checked (``meta["has_rows"]`` is False). Examples are grouped for splitting by
``db_id`` when given, else by schema.
"""

from __future__ import annotations

import re
from typing import Iterable

from ..example import Column, Table
from ..prompts import render_schema
from . import SourceOptions
from .reading import Problems, Where, check_type, describe, require
from .schema_only import SchemaOnlyBuilder
from .schema_text import split_create_statements
from .sql_create_context import hf_splits, read_files, read_schema_only
from .staging import SourceResult

MARKER = "-- Using valid SQLite, answer the following questions for the tables provided above."
_MARKER_RE = re.compile(r"^\s*--\s*Using valid SQLite.*$", re.I | re.M)
_ENDS_WITH_SELECT = re.compile(r"\bSELECT\s*$", re.I)
_STARTS_WITH_QUERY = re.compile(r"^\s*(SELECT|WITH)\b", re.I)
_INPUT_HEAD = re.compile(r"^\s*#*\s*Input\s*:\s*", re.I)
_RESPONSE_TAIL = re.compile(r"\s*#*\s*Response\s*:?\s*(SELECT\s*)?$", re.I)

_DESC_TABLE = re.compile(r"Table\s+(\S+)\s+has columns such as\s+([^\n]*?)\.(?=\s|$)")
_DESC_PK = re.compile(r"(?<![\w.])(\S+)\s+is the primary key\.")
_DESC_FK = re.compile(r"The\s+(\S+)\s+of\s+(\S+)\s+is the foreign key of\s+(\S+)\s+of\s+(\S+?)\.(?=\s|$)")


def describe_tables(text: str) -> list[Table]:
    """Tables from DB-GPT-Hub's schema sentences (empty list when there are none)."""
    tables: dict[str, Table] = {}
    matches = list(_DESC_TABLE.finditer(text))
    for k, m in enumerate(matches):
        name = m.group(1)
        cols = [c.strip() for c in m.group(2).split(",") if c.strip()]
        table = tables.setdefault(name, Table(name=name))
        table.columns = [Column(c, "TEXT") for c in cols]
        # "X is the primary key." sentences between this table's sentence and the next one.
        end = matches[k + 1].start() if k + 1 < len(matches) else len(text)
        for pk in _DESC_PK.finditer(text, m.end(), end):
            if pk.group(1) in cols and pk.group(1) not in table.primary_key:
                table.primary_key.append(pk.group(1))
    for m in _DESC_FK.finditer(text):
        col, table_name, ref_col, ref_table = m.groups()
        if table_name in tables:
            tables[table_name].foreign_keys.append((col, ref_table, ref_col))
    return list(tables.values())


def question_from_instruction(instruction: str) -> str:
    """The ``-- question`` comment lines after the NSQL marker line (or, without the marker,
    the last block of ``--`` comment lines)."""
    m = _MARKER_RE.search(instruction)
    lines = instruction[m.end():].splitlines() if m else instruction.splitlines()
    blocks: list[list[str]] = []
    current: list[str] = []
    for line in lines:
        s = line.strip()
        if s.startswith("--"):
            current.append(s[2:].strip())
        elif s:
            if current:
                blocks.append(current)
            current = []
            if m:  # after the marker the question is the first comment block
                break
    if current:
        blocks.append(current)
    if not blocks:
        return ""
    return " ".join(x for x in (blocks[0] if m else blocks[-1]) if x)


def question_from_input(text: str) -> str:
    text = _INPUT_HEAD.sub("", text)
    text = _RESPONSE_TAIL.sub("", text)
    return " ".join(text.split())


def parse_record(rec: dict, where: Where) -> dict:
    """Question, schema text (or description tables), SQL and extras of one NSQL record."""
    instruction = require(rec, "instruction", str, where, nonempty=True)
    output = require(rec, "output", str, where)
    input_text = rec.get("input")
    if input_text is None:
        input_text = ""
    check_type(input_text, "input", str, where)
    prompt = instruction + ("\n" + input_text if input_text.strip() else "")
    sql = output.strip()
    # DB-GPT-Hub style: the prompt ends in SELECT and the output continues it.
    continues = any(_ENDS_WITH_SELECT.search(part.rstrip()) for part in (instruction, input_text))
    if continues and not _STARTS_WITH_QUERY.match(sql):
        sql = "SELECT " + sql
    sql = sql.rstrip().rstrip(";").strip()
    if not sql:
        raise where.error("field 'output' holds no SQL")
    question = question_from_input(input_text) if input_text.strip() else ""
    if not question:
        question = question_from_instruction(instruction)
    if not question:
        raise where.error("no question found: expected '-- <question>' after the "
                          "'-- Using valid SQLite ...' line, or an 'input' field")
    statements = split_create_statements(prompt)
    extra: dict = {}
    if statements:
        schema_text = "\n\n".join(statements)
    else:
        tables = describe_tables(prompt)
        if not tables:
            raise where.error("no schema found: expected CREATE TABLE statements or "
                              "'Table <name> has columns such as ...' sentences")
        schema_text = render_schema(tables, sample_rows=0)
        extra["schema_from"] = "description"
    db_id = rec.get("db_id")
    if db_id is not None:
        check_type(db_id, "db_id", str, where)
    history = rec.get("history")
    if history:
        if not isinstance(history, list):
            raise where.error(f"field 'history' must be a list, got {describe(history)}")
        extra["history_turns"] = len(history)
    source = rec.get("source")
    if isinstance(source, str) and source:
        extra["nsql_source"] = source
    return {"question": question, "schema_text": schema_text, "sql": sql,
            "db_id": db_id or None, "meta": extra}


def _example(builder: SchemaOnlyBuilder, rec: dict, where: Where, ex_id: str, split: str):
    p = parse_record(rec, where)
    meta = {"split": split, **p["meta"]}
    return builder.example(question=p["question"], sql=p["sql"], schema_text=p["schema_text"],
                           where=where, ex_id=ex_id, db_id=p["db_id"], meta=meta)


def _read_records(named: Iterable[tuple[str, Iterable[tuple[Where, dict]]]],
                  options: SourceOptions, problems: Problems) -> SourceResult:
    return read_schema_only("nsql", _example, named, options, problems)


def read(input_path: str, options: SourceOptions, problems: Problems) -> SourceResult:
    """Convert an NSQL / DB-GPT-Hub file (JSONL or JSON array) or a folder of them."""
    return read_files(input_path, _read_records, options, problems)


def read_hf(splits: dict[str, Iterable[dict]], options: SourceOptions, problems: Problems,
            name: str = "hf") -> SourceResult:
    """Convert NSQL-shaped records loaded with ``datasets`` (e.g. ``NumbersStation/NSQL``)."""
    return _read_records(hf_splits(splits, name), options, problems)
