"""Hard limits of the executor, proven by injecting faults: work SQLite cannot interrupt (one
built-in function call), workers killed mid-query, database files that change or are not
databases, many threads at once, memory. Each test asserts the outcome, the time taken, and
(where a database file is involved) that the file is byte-identical with no new file beside it."""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import apsw
import pytest

from mlx_text2sql import evaluate, sqlexec, sqlpool
from mlx_text2sql.errors import SQLExecutionError
from mlx_text2sql.sqlexec import execute, execute_on_schema, try_execute

from sqlitefiles import concert_db_in, file_digest, make_concert_db

TIMEOUT = 0.3
SLACK = 0.5  # the bound: a stopped query returns within timeout_s + 0.5 s


@pytest.fixture()
def db(tmp_path):
    return concert_db_in(tmp_path)


@pytest.fixture()
def untouched(db):
    before = (file_digest(db), sorted(os.listdir(db.parent)))
    yield
    assert (file_digest(db), sorted(os.listdir(db.parent))) == before


def _warm(db) -> None:
    """A worker is up and has ``db`` open (so the next timing is the query's, not a start)."""
    execute(db, "SELECT 1", timeout_s=30)
    deadline = time.monotonic() + 30
    while sqlpool.current_pool()._starting and time.monotonic() < deadline:
        time.sleep(0.01)


def _timed(db, sql, timeout_s=TIMEOUT, **kw):
    _warm(db)
    start = time.perf_counter()
    outcome = try_execute(db, sql, timeout_s=timeout_s, **kw)
    return outcome, time.perf_counter() - start


# --------------------------------------------------------------------------- one function call

# Operands as large as one value may be (MAX_VALUE_BYTES is 16 MiB), built in one call each.
BIG = "printf('%.*c', 15000000, 'a')"
HALF = "(printf('%.*c', 8000000, 'a') || 'b')"
BIG_JSON = "('[' || replace(printf('%.*c', 2000000, 'x'), 'x', '[1,2],') || '0]')"
PATHS = ", ".join(f"'$[{i}]', {i}" for i in range(400))

# Calls whose work grows faster than their input (quadratic or worse, bounded only by the
# clock): the hard deadline is what stops them, so they must come back as timeouts.
UNBOUNDED = {
    "instr": f"SELECT instr({BIG}, {HALF})",
    "replace": f"SELECT length(replace({BIG}, {HALF}, 'x'))",
    "trim": f"SELECT length(trim({BIG}, printf('%.*c', 1000000, 'b') || 'a'))",
    "ltrim": f"SELECT length(ltrim({BIG}, printf('%.*c', 1000000, 'b') || 'a'))",
    "rtrim": f"SELECT length(rtrim({BIG}, printf('%.*c', 1000000, 'b') || 'a'))",
    # at each of 15 million places, 49,000 characters match before the 'b' fails
    "like": f"SELECT {BIG} LIKE '%' || printf('%.*c', 49000, 'a') || 'b'",
    "glob": f"SELECT {BIG} GLOB '*' || printf('%.*c', 49000, 'a') || 'b'",
}

# Calls whose work is linear in a (capped) input, or that the length cap refuses early: the
# heaviest single call of each must still come back in time, whatever it returns.
LINEAR = {
    "printf": "SELECT length(printf('%.*c', 2000000000, 'x'))",
    "format": "SELECT length(format('%2000000000d', 1))",
    "zeroblob": "SELECT length(zeroblob(2000000000))",
    "randomblob": "SELECT length(randomblob(15000000))",
    "hex": "SELECT length(hex(randomblob(8000000)))",
    "unhex": f"SELECT length(unhex(printf('%.*c', 15000000, '0'), {BIG}))",
    "quote": "SELECT length(quote(randomblob(8000000)))",
    "char": "SELECT length(char(" + ", ".join(["1114111"] * 999) + "))",
    "concat": f"SELECT length(concat({BIG}, {BIG}))",
    "concat_ws": f"SELECT length(concat_ws({BIG}, 'a', 'b', 'c'))",
    "substr": f"SELECT length(substr({BIG}, 2, 14000000))",
    "substring": f"SELECT length(substring({BIG}, 2, 14000000))",
    "length": f"SELECT length({BIG})",
    "octet_length": f"SELECT octet_length({BIG})",
    "lower": f"SELECT length(lower({BIG}))",
    "upper": f"SELECT length(upper({BIG}))",
    "unicode": f"SELECT unicode({BIG})",
    "unistr": f"SELECT length(unistr(replace(printf('%.*c', 2000000, 'x'), 'x', '\\u0041')))",
    "unistr_quote": f"SELECT length(unistr_quote({BIG}))",
    "strftime": "SELECT length(strftime(replace(printf('%.*c', 4000000, 'x'), 'x', '%Y'), 'now'))",
    "round": "SELECT round(1e308, 2000000000)",
    "json": f"SELECT length(json({BIG_JSON}))",
    "jsonb": f"SELECT length(jsonb({BIG_JSON}))",
    "json_valid": f"SELECT json_valid({BIG_JSON})",
    "json_error_position": f"SELECT json_error_position({BIG_JSON} || ']')",
    "json_array_length": f"SELECT json_array_length({BIG_JSON})",
    "json_type": f"SELECT json_type({BIG_JSON}, '$[#-1]')",
    "json_extract": f"SELECT json_extract({BIG_JSON}, '$[#-1]')",
    "jsonb_extract": f"SELECT length(jsonb_extract({BIG_JSON}, '$[1]'))",
    "->": f"SELECT {BIG_JSON} -> '$[#-1]'",
    "->>": f"SELECT {BIG_JSON} ->> '$[#-1]'",
    "json_quote": f"SELECT length(json_quote({BIG}))",
    "json_pretty": f"SELECT length(json_pretty({BIG_JSON}))",
    "json_array": f"SELECT length(json_array({BIG}, {BIG}))",
    "jsonb_array": f"SELECT length(jsonb_array({BIG}))",
    "json_object": f"SELECT length(json_object('a', {BIG}))",
    "jsonb_object": f"SELECT length(jsonb_object('a', {BIG}))",
    "json_set": f"SELECT length(json_set({BIG_JSON}, {PATHS}))",
    "jsonb_set": f"SELECT length(jsonb_set({BIG_JSON}, {PATHS}))",
    "json_insert": f"SELECT length(json_insert({BIG_JSON}, {PATHS}))",
    "jsonb_insert": f"SELECT length(jsonb_insert({BIG_JSON}, {PATHS}))",
    "json_replace": f"SELECT length(json_replace({BIG_JSON}, {PATHS}))",
    "jsonb_replace": f"SELECT length(jsonb_replace({BIG_JSON}, {PATHS}))",
    "json_array_insert": f"SELECT length(json_array_insert({BIG_JSON}, {PATHS}))",
    "jsonb_array_insert": f"SELECT length(jsonb_array_insert({BIG_JSON}, {PATHS}))",
    "json_remove": f"SELECT length(json_remove({BIG_JSON}, "
                   + ", ".join("'$[0]'" for _ in range(900)) + "))",
    "jsonb_remove": f"SELECT length(jsonb_remove({BIG_JSON}, "
                    + ", ".join("'$[0]'" for _ in range(900)) + "))",
    "json_patch": f"SELECT length(json_patch({BIG_JSON}, {BIG_JSON}))",
    "jsonb_patch": f"SELECT length(jsonb_patch({BIG_JSON}, {BIG_JSON}))",
}

# Aggregates: their work per call is one row (a VM step, which the progress handler bounds)
# and a final call over what was collected; the heaviest final calls sort or join everything.
MANY = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 20000000)"
AGGREGATE = {name: f"{MANY} SELECT length({name}({args})) FROM r" for name, args in {
    "group_concat": "printf('%.*c', 1000, 'x')", "string_agg": "printf('%.*c', 1000, 'x'), ','",
    "json_group_array": "n", "jsonb_group_array": "n", "json_group_object": "n, n",
    "jsonb_group_object": "n, n"}.items()}
AGGREGATE.update({name: f"{MANY} SELECT {name}({args}) FROM r" for name, args in {
    "median": "n", "percentile": "n, 50", "percentile_cont": "n, 0.5",
    "percentile_disc": "n, 0.5", "avg": "n", "count": "n", "sum": "n", "total": "n",
    "max": "n", "min": "n"}.items()})
AGGREGATE.update({name: f"{MANY} SELECT max(w) FROM (SELECT {name}({args}) OVER (ORDER BY n) "
                        "AS w FROM r)" for name, args in {
    "row_number": "", "rank": "", "dense_rank": "", "percent_rank": "", "cume_dist": "",
    "ntile": "1000", "lag": "n", "lead": "n", "first_value": "n", "last_value": "n",
    "nth_value": "n, 2"}.items()})

# Constant work per call whatever the arguments (numbers, a fixed-size answer, at most
# SQLITE_MAX_FUNCTION_ARG arguments each looked at once).
CONSTANT = {
    "abs", "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "ceiling", "cos",
    "cosh", "degrees", "exp", "floor", "ln", "log", "log10", "log2", "mod", "pi", "pow",
    "power", "radians", "sign", "sin", "sinh", "sqrt", "tan", "tanh", "trunc", "random",
    "changes", "total_changes", "last_insert_rowid", "coalesce", "ifnull", "iif", "if",
    "nullif", "likely", "unlikely", "likelihood", "typeof", "subtype", "sqlite_version",
    "sqlite_source_id", "sqlite_compileoption_get", "sqlite_compileoption_used", "sqlite_log",
    "date", "time", "datetime", "julianday", "unixepoch", "timediff", "current_date",
    "current_time", "current_timestamp",
}
DENIED = {"load_extension"}  # refused by the authorizer (see tests/test_sqlexec.py)


def _builtin_functions() -> set[str]:
    # The SQLite library the workers run (apsw's), read in this process.
    conn = apsw.Connection(":memory:")
    try:
        return {name for (name,) in conn.execute(
            "SELECT name FROM pragma_function_list WHERE builtin AND type IN ('s', 'a', 'w')")}
    finally:
        conn.close()


def test_every_builtin_function_is_classified():
    # A new SQLite release with new functions fails here until each is looked at.
    known = set(UNBOUNDED) | set(LINEAR) | set(AGGREGATE) | CONSTANT | DENIED
    builtins = _builtin_functions()
    assert builtins - known == set(), "classify these new functions in this file"
    assert known - builtins == set(), "these functions are gone from SQLite"


@pytest.mark.parametrize("name", [n if n in ("instr", "like", "trim") else
                                  pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(UNBOUNDED)])
def test_unbounded_single_call_is_killed_at_the_deadline(db, untouched, name):
    outcome, elapsed = _timed(db, UNBOUNDED[name])
    assert not outcome.ok and outcome.error.kind == "timeout", outcome.error
    assert elapsed < TIMEOUT + SLACK, f"{name}: {elapsed:.2f} s"
    assert "killed" in str(outcome.error) and str(db) in str(outcome.error)
    assert execute(db, "SELECT count(*) FROM singer").rows == [(200,)]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LINEAR) + sorted(AGGREGATE))
def test_heaviest_single_call_of_every_function_returns_in_time(db, untouched, name):
    outcome, elapsed = _timed(db, LINEAR.get(name) or AGGREGATE[name])
    assert elapsed < TIMEOUT + SLACK, f"{name}: {elapsed:.2f} s"
    assert outcome.ok or outcome.error.kind in ("timeout", "error", "memory"), outcome.error


@pytest.mark.parametrize("name", ["printf", "zeroblob", "json_set", "percentile"])
def test_heaviest_single_call_samples_return_in_time(db, untouched, name):
    # A sample of the slow sweep above, for the default suite.
    outcome, elapsed = _timed(db, LINEAR.get(name) or AGGREGATE[name])
    assert elapsed < TIMEOUT + SLACK, f"{name}: {elapsed:.2f} s"
    assert outcome.ok or outcome.error.kind in ("timeout", "error", "memory"), outcome.error


def test_timeout_in_vm_steps_keeps_the_worker(db, untouched):
    # The progress handler stops it inside the worker: no kill, the worker stays.
    _warm(db)
    before = {w["pid"] for w in sqlpool.current_pool().workers()}
    outcome, elapsed = _timed(db, "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 "
                                  "FROM r) SELECT count(*) FROM r")
    assert outcome.error.kind == "timeout" and "killed" not in str(outcome.error)
    assert TIMEOUT <= elapsed < TIMEOUT + SLACK
    assert {w["pid"] for w in sqlpool.current_pool().workers()} == before


# --------------------------------------------------------------------------- killed workers

SLOW = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"


def _busy_worker(sql, wait_s=20.0) -> int:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for w in sqlpool.current_pool().workers():
            if w["busy"] and w["sql"] == sql:
                return w["pid"]
        time.sleep(0.005)
    raise AssertionError("the query never reached a worker")


def test_worker_killed_mid_query_gives_an_error_and_the_pool_recovers(db, untouched):
    _warm(db)
    got = {}

    def run():
        start = time.perf_counter()
        got["outcome"] = try_execute(db, SLOW, timeout_s=30)
        got["elapsed"] = time.perf_counter() - start

    thread = threading.Thread(target=run)
    thread.start()
    pid = _busy_worker(SLOW)
    time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    thread.join(10)
    assert not thread.is_alive()
    err = got["outcome"].error
    assert err is not None and err.kind == "error" and "SIGKILL" in str(err)
    assert f"pid {pid}" in str(err) and got["elapsed"] < 10
    assert execute(db, "SELECT count(*) FROM nums").rows == [(1000,)]
    assert pid not in {w["pid"] for w in sqlpool.current_pool().workers()}


def test_worker_killed_while_idle_is_replaced_without_an_error(db, untouched):
    _warm(db)
    pids = [w["pid"] for w in sqlpool.current_pool().workers()]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    _wait_gone(pids)  # dead before the next query is sent (else that query is the one lost)
    assert execute(db, "SELECT count(*) FROM singer").rows == [(200,)]


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].startswith(("Z", "X"))  # a zombie is dead
    except (FileNotFoundError, ProcessLookupError):
        return True


def _wait_gone(pids, wait_s=10.0) -> set:
    deadline = time.monotonic() + wait_s
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if not _gone(pid)}
        time.sleep(0.01)
    return alive


def _eval_records(tmp_path, db, n):
    recs = []
    for i in range(n):
        # every one a different query with a known answer; every fifth takes ~0.1-0.3 s, so
        # that the killer below finds it running
        limit = (300000 if i % 5 == 0 else 2000) + i
        sql = (f"WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < {limit})"
               f" SELECT count(*), {i} FROM r")
        recs.append({"question": f"q{i}", "schema": "CREATE TABLE nums (n INTEGER);", "sql": sql,
                     "source": "spider", "id": f"e{i}", "db_path": str(db)})
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path, recs


@pytest.mark.slow
def test_evaluation_with_workers_killed_at_random_scores_every_example(db, untouched, tmp_path,
                                                                       capsys):
    data, recs = _eval_records(tmp_path, db, 30)
    out = tmp_path / "out.jsonl"
    _warm(db)
    killed: list[int] = []
    done = threading.Event()
    rng = random.Random(0)

    def killer():
        while not done.is_set() and len(killed) < 4:
            time.sleep(rng.uniform(0.1, 0.4))
            for w in sqlpool.current_pool().workers():
                if w["busy"] and w["sql"] and "n < 3000" in w["sql"]:
                    killed.append(w["pid"])
                    try:
                        os.kill(w["pid"], signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    break

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        assert evaluate.main(["--data", str(data), "--gold", "--output", str(out),
                              "--quiet"]) == 0
    finally:
        done.set()
        thread.join()
    capsys.readouterr()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in recs)  # none lost or twice
    died = [r for r in rows if "died" in ((r.get("gold_error") or "") + (r.get("pred_error") or ""))]
    assert killed and died, "the killer hit no query"
    assert len(died) <= len(killed)
    for r in died:  # each error names the worker that was killed under it
        error = (r.get("gold_error") or "") + (r.get("pred_error") or "")
        assert any(f"pid {pid})" in error for pid in killed) and r["match"] is not True
    by_id = {r["id"]: r for r in recs}
    for r in rows:
        if r not in died:
            i = int(r["id"][1:])
            limit = (300000 if i % 5 == 0 else 2000) + i
            assert r["match"] is True and r["gold_rows"]["rows"] == [[limit, i]]
            assert r["gold_sql"] == by_id[r["id"]]["sql"]


# --------------------------------------------------------------------------- database files

def _fast(fn):
    start = time.perf_counter()
    value = fn()
    assert time.perf_counter() - start < 5.0
    return value


def test_database_replaced_between_queries_is_reopened(tmp_path):
    path = tmp_path / "a.sqlite"
    make_concert_db(path, rows=10)
    assert execute(path, "SELECT count(*) FROM singer").rows == [(10,)]
    other = tmp_path / "b.sqlite"
    make_concert_db(other, rows=30)
    os.replace(other, path)
    assert _fast(lambda: execute(path, "SELECT count(*) FROM singer").rows) == [(30,)]
    assert sorted(os.listdir(tmp_path)) == ["a.sqlite"]


@pytest.mark.parametrize("keep", [0, 100, 4096, 8192 + 17])
def test_database_truncated_between_queries_gives_a_clear_error(tmp_path, keep):
    path = tmp_path / "t.sqlite"
    make_concert_db(path, rows=2000)
    assert execute(path, "SELECT count(*) FROM singer").rows == [(2000,)]
    with open(path, "r+b") as f:
        f.truncate(keep)
    cut = path.read_bytes()
    outcome = _fast(lambda: try_execute(path, "SELECT count(*), max(name) FROM singer"))
    assert not outcome.ok and outcome.error.kind in ("no_database", "error")
    assert str(path) in str(outcome.error)
    assert path.read_bytes() == cut and os.listdir(tmp_path) == ["t.sqlite"]


def test_database_deleted_between_queries_is_no_database(tmp_path):
    path = tmp_path / "d.sqlite"
    make_concert_db(path, rows=10)
    assert execute(path, "SELECT count(*) FROM singer").rows == [(10,)]
    path.unlink()
    outcome = _fast(lambda: try_execute(path, "SELECT count(*) FROM singer"))
    assert outcome.error.kind == "no_database" and "does not exist" in str(outcome.error)
    assert os.listdir(tmp_path) == []


def test_file_that_is_not_sqlite_is_no_database(tmp_path):
    path = tmp_path / "x.sqlite"
    path.write_bytes(os.urandom(8192))
    before = path.read_bytes()
    outcome = _fast(lambda: try_execute(path, "SELECT 1"))
    assert outcome.error.kind == "no_database" and "not a database" in str(outcome.error)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["x.sqlite"]


def test_fifo_is_no_database_and_does_not_hang(tmp_path):
    fifo = tmp_path / "pipe.sqlite"
    os.mkfifo(fifo)
    outcome = _fast(lambda: try_execute(fifo, "SELECT 1", timeout_s=1))
    assert outcome.error.kind == "no_database" and "not a regular file" in str(outcome.error)
    assert os.listdir(tmp_path) == ["pipe.sqlite"]


def test_directory_is_no_database(tmp_path):
    folder = tmp_path / "dir.sqlite"
    folder.mkdir()
    outcome = _fast(lambda: try_execute(folder, "SELECT 1"))
    assert outcome.error.kind == "no_database" and "not a regular file" in str(outcome.error)
    assert os.listdir(folder) == []


def test_stored_views_calling_functions(tmp_path):
    path = tmp_path / "views.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(f"""
        CREATE TABLE t (a TEXT);
        INSERT INTO t VALUES ('x');
        CREATE VIEW slow AS SELECT instr({BIG}, {HALF}) AS v FROM t;
        CREATE VIEW ext AS SELECT load_extension('/tmp/evil.so') AS v FROM t;
        CREATE VIEW missing AS SELECT no_such_function(a) AS v FROM t;
        CREATE VIEW fine AS SELECT upper(a) AS v FROM t;
        CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT load_extension('/tmp/evil.so'); END;
    """)
    conn.commit()
    conn.close()
    before = file_digest(path)
    execute(path, "SELECT 1")
    start = time.perf_counter()
    slow = try_execute(path, "SELECT v FROM slow", timeout_s=TIMEOUT)
    assert slow.error.kind == "timeout" and time.perf_counter() - start < TIMEOUT + SLACK
    ext = _fast(lambda: try_execute(path, "SELECT v FROM ext"))
    assert ext.error.kind == "refused" and "load_extension" in str(ext.error)
    missing = _fast(lambda: try_execute(path, "SELECT v FROM missing"))
    assert missing.error.kind == "error" and "no_such_function" in str(missing.error)
    assert execute(path, "SELECT v FROM fine").rows == [("X",)]
    assert file_digest(path) == before and os.listdir(tmp_path) == ["views.sqlite"]


# --------------------------------------------------------------------------- threads

def test_many_threads_each_get_their_own_result(db, untouched):
    errors: list[str] = []

    def worker(tid: int):
        for i in range(25):
            k = (tid * 7 + i) % 200
            sql = f"SELECT {tid}, {i}, name, age FROM singer WHERE id = {k}"
            rows = execute(db, sql, timeout_s=30).rows
            if rows != [(tid, i, f"Singer {k}", 20 + k % 50)]:
                errors.append(f"{tid}/{i}: {rows}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and not any(t.is_alive() for t in threads)
    assert len(sqlpool.current_pool().workers()) <= sqlexec.MAX_WORKERS


def test_threads_with_a_killed_query_among_them(db, untouched):
    # One thread's query is killed at the hard deadline while others run: theirs are intact.
    results = {}

    def fast(tid):
        results[tid] = [execute(db, f"SELECT {tid} + {i}", timeout_s=30).rows for i in range(20)]

    def slow():
        results["slow"] = try_execute(db, UNBOUNDED["instr"], timeout_s=TIMEOUT)

    threads = [threading.Thread(target=slow)] + [threading.Thread(target=fast, args=(t,))
                                                 for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results["slow"].error.kind == "timeout"
    for tid in range(4):
        assert results[tid] == [[(tid + i,)] for i in range(20)]


# --------------------------------------------------------------------------- memory

def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture()
def small_memory_cap(monkeypatch):
    """Workers capped at 384 MiB (quicker to exhaust than the default)."""
    monkeypatch.setattr(sqlexec, "MEMORY_LIMIT_BYTES", 384 * 1024 * 1024)
    sqlexec.shutdown()
    yield
    sqlexec.shutdown()


def test_query_past_the_memory_cap_gets_the_memory_kind(db, untouched, small_memory_cap):
    peak = _peak_rss_mb()
    # 80 values of 15 MB in one row: 1.2 GB, past the worker's cap.
    sql = "SELECT " + ", ".join(f"printf('%.*c', 15000000 + {i}, 'x')" for i in range(80))
    outcome, elapsed = _timed(db, sql, timeout_s=20)
    assert outcome.error.kind == "memory", outcome.error
    assert "MEMORY_LIMIT_BYTES" in str(outcome.error) and elapsed < 20
    assert execute(db, "SELECT count(*) FROM nums").rows == [(1000,)]
    assert _peak_rss_mb() - peak < 100  # none of it came into this process


def test_rows_past_the_memory_cap_get_the_memory_kind(db, untouched, small_memory_cap):
    peak = _peak_rss_mb()
    sql = ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 1000) "
           "SELECT printf('%.*c', 1000000, 'x') || n FROM r")
    outcome, _ = _timed(db, sql, timeout_s=20, max_rows=5000)
    assert outcome.error.kind == "memory", outcome.error
    assert _peak_rss_mb() - peak < 100
    assert execute(db, "SELECT 1").rows == [(1,)]


@pytest.mark.slow
def test_large_sort_stays_in_memory_and_writes_no_temp_file(db, untouched, tmp_path,
                                                            monkeypatch):
    # temp_store=MEMORY: a sort far larger than the page cache spills nowhere on disk.
    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setenv("SQLITE_TMPDIR", str(spill))
    sqlexec.shutdown()  # new workers see the variable
    sql = ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 100000) "
           "SELECT n, randomblob(200) FROM r ORDER BY 2 LIMIT 1")
    outcome = try_execute(db, sql, timeout_s=30)
    assert outcome.ok and len(outcome.result.rows) == 1
    assert os.listdir(spill) == []
    sqlexec.shutdown()


# --------------------------------------------------------------------------- identifiers

def test_unknown_double_quoted_name_is_an_error_not_a_string(db, untouched):
    with pytest.raises(SQLExecutionError) as info:
        execute(db, 'SELECT "Club Team" FROM singer')
    assert info.value.kind == "error" and 'no such column: "Club Team"' in str(info.value)
    # a real column in double quotes is still a column
    assert execute(db, 'SELECT "name" FROM singer WHERE "id" = 3').rows == [("Singer 3",)]
    # and a string in single quotes a string
    assert execute(db, "SELECT 'Club Team' FROM singer LIMIT 1").rows == [("Club Team",)]


def test_double_quoted_strings_can_be_allowed_per_call(db):
    sql = 'SELECT count(*) FROM singer WHERE name = "Singer 3"'
    assert execute(db, sql, double_quoted_strings=True).rows == [(1,)]
    assert try_execute(db, sql).error.kind == "error"  # the allowance did not stick
    assert try_execute(db, sql, double_quoted_strings=True).ok


def test_unknown_double_quoted_name_on_a_schema_is_an_error():
    schema = 'CREATE TABLE t (a TEXT DEFAULT "none");'  # the schema text itself may use them
    assert execute_on_schema(schema, 'SELECT "a" FROM t').columns == ["a"]
    assert try_execute(None, 'SELECT "b" FROM t', schema_sql=schema).error.kind == "error"


# --------------------------------------------------------------------------- processes

def test_workers_import_no_mlx_and_carry_the_caps(db):
    execute(db, "SELECT 1")
    stats = [r[1] for r in sqlpool.current_pool().broadcast(("stats",))]
    assert stats and all(s["modules"] == [] for s in stats)
    assert all(s["address_space_limit"] == sqlexec.MEMORY_LIMIT_BYTES for s in stats)


def test_workers_exit_when_their_parent_dies(db, tmp_path):
    script = textwrap.dedent(f"""
        import os, sys, threading
        sys.path.insert(0, {str(os.getcwd())!r})
        from mlx_text2sql import sqlexec, sqlpool
        sqlexec.execute({str(db)!r}, "SELECT 1")
        def run():
            sqlexec.try_execute({str(db)!r}, {UNBOUNDED['instr']!r}, timeout_s=600)
        threading.Thread(target=run, daemon=True).start()
        import time
        while not any(w["busy"] for w in sqlpool.current_pool().workers()):
            time.sleep(0.01)
        print(" ".join(str(w["pid"]) for w in sqlpool.current_pool().workers()), flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert pids
    parent.kill()
    parent.wait()
    alive = _wait_gone(pids)
    assert not alive, f"workers {alive} outlived their parent (one was mid-query)"


def test_shutdown_stops_the_workers_and_the_next_query_starts_new_ones(db):
    execute(db, "SELECT 1")
    pids = [w["pid"] for w in sqlpool.current_pool().workers()]
    sqlexec.shutdown()
    assert not _wait_gone(pids)
    assert execute(db, "SELECT 2").rows == [(2,)]
    assert not {w["pid"] for w in sqlpool.current_pool().workers()} & set(pids)
