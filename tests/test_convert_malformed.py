"""Malformed input of every shape yields our InputError (strict) or a skipped-and-counted
record, never another exception."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_text2sql.convert import _main
from mlx_text2sql.errors import InputError
from mlx_text2sql.sources import SourceOptions, nsql, spider, sql_create_context, wikisql
from mlx_text2sql.sources.common import Problems, Where

FIX = Path(__file__).parent / "fixtures" / "convert"

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10), st.floats(allow_nan=True),
                    st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)), max_leaves=12)

# Records close to the real shapes, with fields dropped, retyped or out of range.
small_int = st.integers(-3, 9)
wikisql_sql = st.fixed_dictionaries({}, optional={
    "sel": st.one_of(small_int, scalars), "agg": st.one_of(small_int, scalars),
    "conds": st.one_of(st.lists(st.lists(st.one_of(small_int, scalars), max_size=4), max_size=3), json_values,
                       st.fixed_dictionaries({"column_index": st.lists(small_int, max_size=2),
                                              "operator_index": st.lists(small_int, max_size=2),
                                              "condition": st.lists(scalars, max_size=2)}))})
wikisql_records = st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "table_id": st.one_of(st.just("1-1000-1"), st.just("2-2000-3"), scalars),
    "question": st.one_of(st.text(max_size=20), scalars),
    "sql": st.one_of(wikisql_sql, json_values)}))
text_or_any = st.one_of(st.text(max_size=30), scalars, st.just("CREATE TABLE t (a INT)\n-- q?"))
nsql_records = st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "instruction": text_or_any, "output": text_or_any, "input": text_or_any,
    "history": st.one_of(json_values), "db_id": st.one_of(scalars), "source": scalars}))
scc_records = st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "question": text_or_any, "context": st.one_of(text_or_any, st.just("CREATE TABLE (")),
    "answer": text_or_any}))
spider_records = st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "db_id": st.one_of(st.just("bookshop"), scalars), "question": text_or_any,
    "query": text_or_any, "sql": json_values}))
spider_tables = st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "db_id": st.one_of(st.just("x"), scalars),
    "table_names_original": st.one_of(st.lists(st.text(max_size=5), max_size=3), json_values),
    "column_names_original": st.one_of(st.lists(st.lists(st.one_of(small_int, st.text(max_size=4)),
                                                         max_size=3), max_size=4), json_values),
    "column_types": st.one_of(st.lists(st.sampled_from(["text", "number"]), max_size=4), json_values),
    "primary_keys": st.one_of(st.lists(st.one_of(small_int, st.lists(small_int, max_size=2)), max_size=3), json_values),
    "foreign_keys": st.one_of(st.lists(st.lists(small_int, max_size=3), max_size=2), json_values)}))

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def only_input_errors(fn):
    """Run ``fn``; an InputError is fine (it must name where), anything else fails."""
    try:
        fn()
    except InputError as e:
        assert e.path is not None and str(e).startswith(e.path)


def _wikisql_reader(tmp_path):
    reader = wikisql._Reader(SourceOptions(out_dir=str(tmp_path), progress=False), Problems(strict=True))
    reader.load_tables_file(FIX / "wikisql" / "dev.tables.jsonl")
    return reader


@SETTINGS
@given(rec=wikisql_records)
def test_wikisql_records(tmp_path_factory, rec):
    reader = _wikisql_reader(tmp_path_factory.mktemp("w"))
    only_input_errors(lambda: reader.example(rec, Where("dev.jsonl", 3), "dev", 3))


@SETTINGS
@given(raw=wikisql_records | st.fixed_dictionaries({}, optional={
    "id": scalars, "header": st.lists(st.one_of(st.text(max_size=4), scalars), max_size=3),
    "types": st.lists(st.one_of(st.sampled_from(["text", "real", "REAL "]), scalars), max_size=3),
    "rows": st.lists(st.lists(scalars, max_size=3), max_size=3)}))
def test_wikisql_tables(raw):
    only_input_errors(lambda: wikisql.parse_table(raw, Where("dev.tables.jsonl", 2)))


@SETTINGS
@given(rec=nsql_records)
def test_nsql_records(rec):
    only_input_errors(lambda: nsql.parse_record(rec, Where("n.jsonl", 1)))


@SETTINGS
@given(rec=scc_records)
def test_sql_create_context_records(tmp_path_factory, rec):
    from mlx_text2sql.sources.common import SchemaOnlyBuilder, Staging

    staging = Staging()
    builder = SchemaOnlyBuilder("sql-create-context", str(tmp_path_factory.mktemp("s")), True, staging)
    try:
        only_input_errors(lambda: sql_create_context._example(builder, rec, Where("s.jsonl", 1), "s-1", "s"))
    finally:
        staging.rollback()


@SETTINGS
@given(raw=spider_tables, rec=spider_records)
def test_spider_tables_and_records(tmp_path_factory, raw, rec):
    reader = spider._Reader(SourceOptions(out_dir=str(tmp_path_factory.mktemp("p")), progress=False),
                            Problems(strict=True))
    only_input_errors(lambda: spider.SpiderSchema(raw, Where("tables.json", 1), None))
    schemas = {"bookshop": spider.SpiderSchema(json.loads((FIX / "spider" / "tables.json").read_text())[0],
                                               Where("tables.json", 2), None)}
    only_input_errors(lambda: reader.example(rec, Where("dev.json", 5), "dev", "dev-0", schemas, "tables.json"))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lines=st.lists(st.one_of(wikisql_records.map(lambda r: json.dumps(r)), st.text(max_size=30)),
                      min_size=1, max_size=8))
def test_whole_files_strict_or_skipped(tmp_path_factory, lines):
    """Random lines in a questions file: without --strict every bad one is counted and the
    rest converted; with --strict the run stops with an InputError naming file and line."""
    lines = [l.replace("\r", " ").replace("\n", " ") for l in lines]  # one record per line
    src = tmp_path_factory.mktemp("src")
    (src / "dev.tables.jsonl").write_bytes((FIX / "wikisql" / "dev.tables.jsonl").read_bytes())
    (src / "dev.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path_factory.mktemp("out")
    assert _main(["wikisql", str(src), "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "convert_report.json").read_text())
    written = sum(len((out / f"{s}.jsonl").read_text().splitlines()) for s in ("train", "valid", "test"))
    assert written + report["skipped"] == sum(1 for l in lines if l.strip())
    try:
        _main(["wikisql", str(src), "--out", str(out), "--no-progress", "--strict"])
        assert report["skipped"] == 0
    except InputError as e:
        assert e.path == str(src / "dev.jsonl") and e.line is not None
