"""The read-only executor: what it returns, and adversarial tests of what it blocks (one
property each). Every blocked statement must leave the database's bytes unchanged and create
no file beside it."""

from __future__ import annotations

import os
import sqlite3
import time

import apsw
import pytest

from mlx_text2sql import sqlengine, sqlexec
from mlx_text2sql.errors import SQLExecutionError
from mlx_text2sql.sqlexec import (ExecResult, check_statement, execute, execute_on_schema,
                                  format_table, split_statements, try_execute)

from sqlcases import SPLIT_CASES
from sqlitefiles import concert_db_in, file_digest

FAST = 1.5  # seconds: every stopped query must come back well under this


@pytest.fixture(autouse=True)
def _fresh_cache():
    sqlexec.close_all()
    yield
    sqlexec.close_all()


@pytest.fixture()
def db(tmp_path):
    return concert_db_in(tmp_path)


@pytest.fixture()
def untouched(db, tmp_path):
    """Yields; then asserts the database bytes and the files around it are unchanged."""
    before_hash = file_digest(db)
    before_files = sorted(os.listdir(db.parent))
    before_tmp = sorted(os.listdir(tmp_path))
    yield
    assert file_digest(db) == before_hash
    assert sorted(os.listdir(db.parent)) == before_files
    assert sorted(os.listdir(tmp_path)) == before_tmp


# --------------------------------------------------------------------------- plain queries

def test_select_returns_columns_rows_and_time(db, untouched):
    r = execute(db, "SELECT name, age FROM singer WHERE id < 3 ORDER BY id")
    assert r.columns == ["name", "age"]
    assert r.rows == [("Singer 0", 20), ("Singer 1", 21), ("Singer 2", 22)]
    assert not r.truncated and 0 <= r.elapsed_s < FAST and r.db_path == str(db)


@pytest.mark.parametrize("sql", [
    "SELECT count(*) FROM singer;",
    "SELECT count(*) FROM singer ;  -- trailing comment; with a semicolon",
    "/* leading comment */ SELECT count(*) FROM singer",
    "-- line comment\nSELECT count(*) FROM singer;\n\n",
    "WITH s AS (SELECT * FROM singer) SELECT count(*) FROM s",
    "select COUNT(*) from SINGER",
])
def test_one_statement_with_comments_and_trailing_semicolon_runs(db, sql):
    assert execute(db, sql).rows == [(200,)]


def test_semicolons_inside_strings_and_identifiers_are_not_separators(db):
    r = execute(db, "SELECT 'a;b' AS \"x;y\", ';' -- ;\n;")
    assert r.columns[0] == "x;y" and r.rows == [("a;b", ";")]


def test_views_and_recursive_ctes_are_readable(db):
    assert execute(db, "SELECT count(*) FROM old_singers").rows == [(116,)]
    sql = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) " \
          "SELECT sum(n) FROM r"
    assert execute(db, sql).rows == [(15,)]


def test_values_statement_runs(db):
    assert execute(db, "VALUES (1, 'a'), (2, 'b')").rows == [(1, "a"), (2, "b")]


# --------------------------------------------------------------------------- refused statements

REFUSED = [
    ("insert", "INSERT INTO singer VALUES (999, 'x', 1, 1.0)"),
    ("update", "UPDATE singer SET age = 0"),
    ("delete", "DELETE FROM singer"),
    ("drop", "DROP TABLE singer"),
    ("create", "CREATE TABLE t2 (a)"),
    ("create_index", "CREATE INDEX i2 ON singer(name)"),
    ("temp_table", "CREATE TEMP TABLE t (a)"),
    ("replace", "REPLACE INTO singer VALUES (1, 'x', 1, 1.0)"),
    ("upsert", "INSERT INTO singer VALUES (1, 'x', 1, 1.0) "
               "ON CONFLICT(id) DO UPDATE SET name = excluded.name"),
    ("alter", "ALTER TABLE singer ADD COLUMN z"),
    ("writable_schema", "PRAGMA writable_schema = 1"),
    ("journal_mode", "PRAGMA journal_mode = WAL"),
    ("vacuum", "VACUUM"),
    ("begin", "BEGIN IMMEDIATE"),
    ("explain", "EXPLAIN SELECT 1"),
    ("two_statements", "SELECT 1; DROP TABLE singer"),
    ("two_selects", "SELECT 1; SELECT 2"),
    ("with_insert", "WITH x AS (SELECT 1) INSERT INTO nums SELECT * FROM x"),
    ("with_delete", "WITH x AS (SELECT 1) DELETE FROM nums"),
    ("load_extension", "SELECT load_extension('/tmp/evil.so')"),
    ("fts3_tokenizer", "SELECT fts3_tokenizer('simple')"),
    ("pragma_function", "SELECT * FROM pragma_table_info('singer')"),
]


@pytest.mark.parametrize("name,sql", REFUSED, ids=[n for n, _ in REFUSED])
def test_write_and_escape_statements_are_refused(db, untouched, name, sql):
    start = time.perf_counter()
    with pytest.raises(SQLExecutionError) as info:
        execute(db, sql, timeout_s=0.5)
    assert time.perf_counter() - start < FAST
    assert info.value.kind == "refused", str(info.value)
    assert str(db) in str(info.value)
    assert execute(db, "SELECT count(*) FROM singer").rows == [(200,)]


def test_attach_of_another_file_is_refused_and_creates_nothing(db, tmp_path, untouched):
    target = tmp_path / "attached.sqlite"
    for sql in (f"ATTACH DATABASE '{target}' AS other",
                f"SELECT * FROM singer; ATTACH '{target}' AS other"):
        with pytest.raises(SQLExecutionError) as info:
            execute(db, sql)
        assert info.value.kind == "refused"
    assert not target.exists()


def test_vacuum_into_is_refused_and_writes_no_copy(db, tmp_path, untouched):
    target = tmp_path / "copy.sqlite"
    with pytest.raises(SQLExecutionError) as info:
        execute(db, f"VACUUM INTO '{target}'")
    assert info.value.kind == "refused"
    assert not target.exists()


RAW_WRITES = [s for n, s in REFUSED if ";" not in s and not s.startswith(("SELECT", "EXPLAIN"))] + [
    "ATTACH DATABASE '{tmp}/raw_attached.sqlite' AS other",
    "VACUUM INTO '{tmp}/raw_copy.sqlite'",
    "REINDEX",
    "ANALYZE",
    "SAVEPOINT s",
    "CREATE TEMP VIEW v AS SELECT 1",
    "CREATE TEMP TRIGGER tr AFTER INSERT ON nums BEGIN SELECT 1; END",
]


@pytest.mark.parametrize("sql", RAW_WRITES)
def test_connection_itself_refuses_writes_without_the_statement_check(db, tmp_path, untouched,
                                                                       sql):
    # Defence in depth: even if the lexical check were bypassed, the open mode, query_only,
    # limits and authorizer of a worker's connection (built here, in this process) refuse it.
    entry = sqlengine.Engine().file_connection(db, str(db), sqlexec._limits())
    with pytest.raises(apsw.Error):
        entry.conn.execute(sql.format(tmp=tmp_path))
    entry.conn.close()
    assert execute(db, "SELECT count(*) FROM nums").rows == [(1000,)]


def test_in_memory_schema_database_refuses_writes_too():
    schema = "CREATE TABLE t (a INTEGER, b TEXT);"
    assert execute_on_schema(schema, "SELECT a, b FROM t WHERE b = 'x'").rows == []
    with pytest.raises(SQLExecutionError) as info:
        execute_on_schema(schema, "WITH x AS (SELECT 1) INSERT INTO t (a) SELECT * FROM x")
    assert info.value.kind == "refused"
    assert execute_on_schema(schema, "SELECT count(*) FROM t").rows == [(0,)]


# --------------------------------------------------------------------------- limits

def test_runaway_recursive_cte_stops_at_the_time_limit(db, untouched):
    sql = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"
    start = time.perf_counter()
    with pytest.raises(SQLExecutionError) as info:
        execute(db, sql, timeout_s=0.2)
    elapsed = time.perf_counter() - start
    assert info.value.kind == "timeout" and 0.2 <= elapsed < FAST


def test_huge_cross_join_aggregate_stops_at_the_time_limit(db, untouched):
    sql = "SELECT count(*) FROM nums a, nums b, nums c, nums d"
    start = time.perf_counter()
    with pytest.raises(SQLExecutionError) as info:
        execute(db, sql, timeout_s=0.2)
    assert info.value.kind == "timeout" and time.perf_counter() - start < FAST


def test_time_limit_covers_fetching_rows(db):
    # The first row comes at once (execute returns), the rest only after a 10^9-row scan
    # that runs inside fetchmany: the limit must hold there too.
    sql = "SELECT 1 UNION ALL SELECT a.n FROM nums a, nums b, nums c WHERE a.n + b.n + c.n = -1"
    start = time.perf_counter()
    with pytest.raises(SQLExecutionError) as info:
        execute(db, sql, timeout_s=0.2)
    assert info.value.kind == "timeout" and time.perf_counter() - start < FAST


def test_huge_cross_join_rows_stop_at_the_row_cap(db, untouched):
    start = time.perf_counter()
    with pytest.raises(SQLExecutionError) as info:
        execute(db, "SELECT * FROM nums a, nums b, nums c", max_rows=5000)
    assert info.value.kind == "too_many_rows" and "5000" in str(info.value)
    assert time.perf_counter() - start < FAST


def test_truncate_returns_the_first_rows_and_says_so(db):
    r = execute(db, "SELECT n FROM nums ORDER BY n", max_rows=10, truncate=True)
    assert r.rows == [(i,) for i in range(10)] and r.truncated


def test_exactly_max_rows_is_not_truncated(db):
    r = execute(db, "SELECT n FROM nums", max_rows=1000)
    assert len(r.rows) == 1000 and not r.truncated


def test_huge_blob_is_refused_by_the_length_limit(db):
    with pytest.raises(SQLExecutionError) as info:
        execute(db, "SELECT zeroblob(1000000000)")
    assert info.value.kind == "error" and "too big" in str(info.value)


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("sql,kind,words", [
    ("SELEC name FROM singer", "syntax", "SELEC"),
    ("SELECT name FROM", "syntax", "incomplete input"),
    ("SELECT name FROM singer WHERE", "syntax", "incomplete input"),
    ("SELECT (name FROM singer", "syntax", "syntax error"),
    ("The answer is 42.", "syntax", "The answer"),
    ("", "syntax", "empty"),
    ("-- nothing here", "syntax", "only comments"),
    ("SELECT nosuch FROM singer", "error", "no such column: nosuch"),
    ("SELECT * FROM nosuch", "error", "no such table: nosuch"),
    ("SELECT nosuchfn(1)", "error", "no such function"),
])
def test_errors_have_a_kind_and_name_the_database_and_sqlite_error(db, sql, kind, words):
    with pytest.raises(SQLExecutionError) as info:
        execute(db, sql)
    assert info.value.kind == kind
    assert str(db) in str(info.value) and words in str(info.value)
    assert info.value.sql == sql


def test_missing_database_is_no_database(tmp_path):
    with pytest.raises(SQLExecutionError) as info:
        execute(tmp_path / "absent.sqlite", "SELECT 1")
    assert info.value.kind == "no_database" and "absent.sqlite" in str(info.value)
    assert not (tmp_path / "absent.sqlite").exists()


def test_empty_file_is_no_database_not_a_query_error(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with pytest.raises(SQLExecutionError) as info:
        execute(empty, "SELECT * FROM t")
    assert info.value.kind == "no_database" and "empty" in str(info.value)


def test_file_that_is_not_a_database_is_no_database(tmp_path):
    bogus = tmp_path / "notes.sqlite"
    bogus.write_text("this is not a database, just text that is long enough " * 20)
    before = bogus.read_bytes()
    with pytest.raises(SQLExecutionError) as info:
        execute(bogus, "SELECT 1")
    assert info.value.kind == "no_database" and bogus.read_bytes() == before


def test_try_execute_returns_the_error_instead_of_raising(db):
    ok = try_execute(db, "SELECT 1")
    assert ok.ok and ok.result.rows == [(1,)]
    bad = try_execute(db, "DROP TABLE singer")
    assert not bad.ok and bad.result is None and bad.error.kind == "refused"
    none = try_execute(None, "SELECT 1")
    assert none.error.kind == "no_database"
    schema = try_execute(None, "SELECT a FROM t", schema_sql="CREATE TABLE t (a);")
    assert schema.ok and schema.result.columns == ["a"]


@pytest.mark.parametrize("extra", [
    "ATTACH DATABASE '{tmp}/from_schema.sqlite' AS other; CREATE TABLE other.t (a);",
    "VACUUM INTO '{tmp}/from_schema.sqlite';",
    "PRAGMA writable_schema = 1;",
    "SELECT load_extension('{tmp}/evil.so');",
    "CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END;",
])
def test_schema_text_cannot_escape_its_in_memory_database(tmp_path, extra):
    schema = "CREATE TABLE t (a INTEGER);\n" + extra.format(tmp=tmp_path)
    with pytest.raises(SQLExecutionError) as info:
        execute_on_schema(schema, "SELECT count(*) FROM t")
    assert info.value.kind == "no_database" and "not allowed in a schema" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_runaway_schema_build_is_stopped(monkeypatch):
    monkeypatch.setattr(sqlexec, "SCHEMA_BUILD_TIMEOUT_S", 0.2)
    schema = ("CREATE TABLE t (a INTEGER); INSERT INTO t WITH RECURSIVE r(n) AS "
              "(SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n FROM r;")
    start = time.perf_counter()
    with pytest.raises(SQLExecutionError) as info:
        execute_on_schema(schema, "SELECT 1")
    assert "took more than 0.2 s" in str(info.value) and time.perf_counter() - start < FAST


def test_schema_with_rows_indexes_and_views_builds():
    schema = ("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT UNIQUE); CREATE INDEX i ON t(b);"
              "CREATE VIEW v AS SELECT a FROM t; INSERT INTO t VALUES (1, 'x');\n"
              "/* 1 example row from t: ... */")
    assert execute_on_schema(schema, "SELECT a FROM v").rows == [(1,)]


def test_schema_that_does_not_build_is_no_database():
    with pytest.raises(SQLExecutionError) as info:
        execute_on_schema("CREATE TABLE (broken", "SELECT 1")
    assert info.value.kind == "no_database" and "schema does not build" in str(info.value)


# --------------------------------------------------------------------------- files and caching

def test_wal_database_opens_without_creating_shm_or_wal_files(tmp_path):
    path = tmp_path / "wal.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (a)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.close()  # checkpoints and removes -wal / -shm
    before = sorted(os.listdir(tmp_path))
    assert execute(path, "SELECT a FROM t").rows == [(1,)]
    assert sorted(os.listdir(tmp_path)) == before


def _worker_stats() -> list[dict]:
    return [reply[1] for reply in sqlexec._get_pool().broadcast(("stats",))]


def test_connection_is_reused_for_the_same_file(db):
    execute(db, "SELECT 1")
    opened = sum(s["opened"] for s in _worker_stats())
    execute(db, "SELECT 2")
    assert sum(s["opened"] for s in _worker_stats()) == opened


def test_rewritten_file_is_reopened_and_its_new_content_seen(tmp_path):
    path = tmp_path / "changing.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (a)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    assert execute(path, "SELECT count(*) FROM t").rows == [(1,)]
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(5000)])
    conn.commit()
    conn.close()
    assert execute(path, "SELECT count(*) FROM t").rows == [(5001,)]


def test_cache_keeps_a_bounded_number_of_connections(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlexec, "MAX_OPEN_CONNECTIONS", 3)
    for i in range(6):
        path = tmp_path / f"d{i}.sqlite"
        sqlite3.connect(path).execute("CREATE TABLE t (a)").connection.close()
        execute(path, "SELECT count(*) FROM t")
    assert max(s["files"] for s in _worker_stats()) == 3


def test_invalid_utf8_text_is_decoded_with_replacement(tmp_path):
    path = tmp_path / "latin1.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (a TEXT)")
    conn.execute("INSERT INTO t VALUES (CAST(X'4361666AE9' AS TEXT))")  # 'Cafj' + latin-1 é
    conn.commit()
    conn.close()
    assert execute(path, "SELECT a FROM t").rows == [("Cafj\ufffd",)]


# --------------------------------------------------------------------------- helpers

@pytest.mark.parametrize("sql,expected", SPLIT_CASES)
def test_split_statements(sql, expected):
    assert split_statements(sql) == expected


def test_check_statement_returns_the_single_statement():
    assert check_statement("  SELECT 1 ; -- done") == "SELECT 1"


def test_format_table_aligns_and_summarises():
    r = ExecResult(["name", "age", "score"],
                   [("Ann", 31, 2.5), ("Bob\nby", None, 1 / 3), ("C", 7, None)], 0.0123)
    assert format_table(r, max_rows=2) == (
        "name   |  age |        score\n"
        "-------+------+-------------\n"
        "Ann    |   31 |          2.5\n"
        "Bob by | NULL | 0.3333333333\n"
        "... 1 more row\n"
        "(3 rows, 0.012 s)"
    )
