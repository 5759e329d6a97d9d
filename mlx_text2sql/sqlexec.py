"""Read-only, time-limited execution of one SQL query on a SQLite file.

``evaluate`` runs every gold and every predicted query through :func:`execute` (or the
non-raising :func:`try_execute`), and ``generate --execute`` shows a model's answer with
:func:`format_table`. Predicted SQL is untrusted text written by a model, so each query runs
behind several independent layers; any one of them alone stops a write.

What is blocked, and by which layer
===================================

1. **Statement check (before SQLite sees the text).** The text is lexed (quotes, ``--`` and
   ``/* */`` comments understood) and must hold exactly one statement: ``SELECT 1; DROP TABLE t``
   is refused with a clear error (a trailing ``;`` and comments are fine). The statement must
   start with ``SELECT``, ``WITH`` or ``VALUES``; SQLite's other statements (``INSERT``,
   ``UPDATE``, ``DELETE``, ``REPLACE``, ``CREATE``, ``DROP``, ``ALTER``, ``ATTACH``, ``DETACH``,
   ``PRAGMA``, ``VACUUM``, ``REINDEX``, ``ANALYZE``, ``BEGIN``/``COMMIT``/``SAVEPOINT``,
   ``EXPLAIN``) are refused, and text starting with any other word (prose, a typo) is a syntax
   error. ``WITH x AS (...) INSERT ...`` passes this check and is stopped by the layers below,
   which do not rely on it: the authorizer alone refuses every statement listed here except a
   bare ``REINDEX`` (SQLite does not consult it), which the read-only open refuses. A statement
   tracer on the connection also stops any second statement before it runs.
2. **Read-only, immutable open.** The file is opened through the URI
   ``file:<path>?mode=ro&immutable=1``: SQLite cannot write it, takes no locks and creates no
   ``-journal``/``-wal``/``-shm`` files beside it (a database in WAL mode with a live ``-wal``
   file is opened ``mode=ro`` without ``immutable``, so committed WAL content is seen). The
   file is stat-ed before every query and a cached connection is reopened when its device,
   inode, size or mtime changes, so ``immutable`` never serves stale pages of a file replaced,
   truncated or rewritten between queries. Only regular, non-empty files are opened (a FIFO
   would block the open; a directory or an empty file is ``kind="no_database"``).
3. **Connection settings**, applied before the authorizer is installed: ``PRAGMA query_only=1``
   (SQLite refuses any change, including ``CREATE TEMP TABLE``), trusted schema off
   (functions with side effects cannot run from views or triggers stored in the file),
   ``temp_store=MEMORY`` (sorts and temporary b-trees never write a file), defensive mode,
   extension loading and ATTACH's creating or writing files switched off
   (``sqlite3_db_config``), and limits: no attached databases (``SQLITE_LIMIT_ATTACHED=0``) and
   strings/blobs capped at ``MAX_VALUE_BYTES`` (``zeroblob(2e9)`` and
   ``printf('%.*c', 2e9, 'x')`` fail at once). **Double-quoted strings are off**
   (``SQLITE_DBCONFIG_DQS_DML``/``DQS_DDL``): a double-quoted name is an identifier, and
   ``SELECT "no_such_column" FROM t`` is an error (``no such column``) instead of returning the
   text, so a wrong column name cannot look like valid SQL; ``double_quoted_strings=True`` (or
   ``DOUBLE_QUOTED_STRINGS``) restores SQLite's legacy fallback for data written that way
   (Spider's gold SQL writes ``WHERE name = "Alice"``).
4. **Authorizer**, deny by default. Allowed: reading tables and columns
   (``SQLITE_SELECT``, ``SQLITE_READ``), recursive CTEs (``SQLITE_RECURSIVE``), SQLite's built-in
   functions except those in ``DENIED_FUNCTIONS`` (``load_extension`` loads native code,
   ``fts3_tokenizer`` can register a C pointer, ``readfile``/``writefile``/``edit``/``lsdir``
   touch files where a build has them). Denied: every ``INSERT``/``UPDATE``/``DELETE``, every
   ``CREATE``/``DROP``/``ALTER`` (temp objects included), ``ATTACH`` and ``DETACH`` (which is
   also what stops ``VACUUM INTO '/tmp/x'``: SQLite runs it as an ATTACH of the target file,
   and a read-only source database does not stop it otherwise), every pragma, including the
   table-valued ``pragma_table_info(...)`` forms (no query needs them: the schema is in the
   prompt), transactions and savepoints, ``ANALYZE``, ``REINDEX``, virtual-table creation.
   The first denial's reason is kept and put into the error message.
5. **Time limit inside SQLite.** A progress handler runs every ``PROGRESS_EVERY``
   virtual-machine steps and interrupts the query once ``timeout_s`` has passed (counted from
   when the worker receives it: opening, execution and fetching): runaway recursive CTEs and
   huge cross joins stop within a few milliseconds of the limit, and the worker stays.
6. **Hard deadline: a worker process per query, killed when late.** The handler of layer 5
   runs only between virtual-machine steps, so work inside one built-in function call
   (``instr``, ``replace``, ``trim`` or ``LIKE`` over megabyte operands grow quadratically)
   cannot be interrupted from inside. Every query therefore runs in a worker process
   (:mod:`mlx_text2sql.sqlpool`, :mod:`mlx_text2sql.sqlworker`); a worker that has not answered
   ``timeout_s + HARD_DEADLINE_GRACE_S`` after the query reached it is killed with SIGKILL and
   replaced, and the caller gets ``kind="timeout"``. No query, whatever it does, holds a caller
   past that (``timeout_s=None`` or 0: no limit; ``execute_on_schema`` adds
   ``SCHEMA_BUILD_TIMEOUT_S`` for building the schema). A worker that dies (killed from outside,
   crashed) gives that query ``kind="error"``; the next query runs on a new worker.
7. **Memory cap per worker.** Each worker caps its own address space at ``MEMORY_LIMIT_BYTES``
   (``RLIMIT_AS``) and SQLite's heap at half of it: a query that tries to build gigabytes fails
   with ``kind="memory"``, in the worker, and no result larger than ``MAX_RESULT_BYTES`` is sent
   back, so the calling process's footprint stays bounded. Core dumps are off in workers.
8. **Row cap.** Rows are fetched up to ``max_rows + 1`` in the worker; past ``max_rows`` the
   query stops with ``kind="too_many_rows"`` (or, with ``truncate=True``, the first ``max_rows``
   rows come back with ``truncated=True``), so ``SELECT * FROM a, b, c`` cannot fill memory.

Errors are :class:`~mlx_text2sql.errors.SQLExecutionError` with ``.kind`` one of ``"syntax"``,
``"refused"``, ``"timeout"``, ``"memory"``, ``"too_many_rows"``, ``"no_database"``, ``"error"``
and a message naming the database and SQLite's own words.

:func:`execute_on_schema` builds an empty in-memory database from a record's CREATE TABLE
text (for data without a database file); the text is data too, so while it builds only
creating tables, indexes and views and inserting rows into that in-memory database is allowed
(no ATTACH, pragmas or extension functions), within ``SCHEMA_BUILD_TIMEOUT_S``; then the same
guards as above apply.

Every connection also carries the collation ``CASEFOLD`` (Unicode case-insensitive, Python's
``str.casefold``), which :func:`mlx_text2sql.metrics.case_insensitive_sql` uses for WikiSQL.

Workers
=======

Connections are ``apsw`` connections (apsw ships a current SQLite and exposes
``sqlite3_db_config``). The pool starts its first worker on the first query, grows to
``MAX_WORKERS`` as concurrent threads need them (each caller gets its own reply; a
single-threaded caller always reuses one worker), and each worker caches connections per
database file (LRU of ``MAX_OPEN_CONNECTIONS``), so evaluating thousands of queries neither
starts processes nor reopens files; rows come back as one pickled list. Workers are fresh
interpreters (started with ``subprocess``, never forked from a process that may hold MLX or
BLAS threads) that import only the standard library, apsw and the executor's modules; they
exit when this process exits or dies (a lifeline pipe), and :func:`shutdown` stops them.
:func:`close_all` closes their cached connections. Text that is not valid UTF-8 (some Spider
databases hold Latin-1 bytes) is decoded with replacement characters instead of failing the
query.

Pure Python: no MLX import.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from typing import Any

from .errors import SQLExecutionError
from .sql import lexer as sql_lexer

__all__ = [
    "ExecResult", "ExecOutcome", "execute", "try_execute", "execute_on_schema",
    "check_statement", "split_statements", "format_table", "close_all", "shutdown",
    "DENIED_FUNCTIONS",
]

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_ROWS = 10_000
MAX_OPEN_CONNECTIONS = 16  # per worker process
MAX_VALUE_BYTES = 16 * 1024 * 1024
# A collation every connection carries: Unicode case-insensitive comparison (SQLite's own
# NOCASE folds ASCII letters only, so 'Şımarık' would not equal 'şımarık').
CASEFOLD_COLLATION = "CASEFOLD"
PROGRESS_EVERY = 1000  # VM instructions between deadline checks: microseconds of work, so a deadline is met closely
# A query still running this long after timeout_s is killed with its worker process.
HARD_DEADLINE_GRACE_S = 0.2
MEMORY_LIMIT_BYTES = 1024 * 1024 * 1024  # address space of one worker process
MAX_RESULT_BYTES = 256 * 1024 * 1024     # largest pickled result a worker sends back
MAX_WORKERS = min(8, max(2, os.cpu_count() or 1))
# Whether a double-quoted name that is no column becomes a string literal (SQLite's legacy
# fallback); execute's ``double_quoted_strings`` overrides it per call.
DOUBLE_QUOTED_STRINGS = False
SCHEMA_BUILD_TIMEOUT_S = 10.0

ALLOWED_FIRST_KEYWORDS = ("SELECT", "WITH", "VALUES")

DENIED_FUNCTIONS = frozenset({
    "load_extension",   # loads a shared library: arbitrary native code
    "fts3_tokenizer",   # two-argument form registers a raw C pointer
    "readfile", "writefile", "edit", "lsdir",  # file access (sqlite3 shell / fileio extension)
    "sqlar_compress", "sqlar_uncompress", "zipfile", "zipfile_cds",
})

# First words of statements that SQLite knows but this executor never runs: these give
# kind="refused"; any other first word (prose, a typo) gives kind="syntax".
REFUSED_FIRST_KEYWORDS = frozenset({
    "INSERT", "UPDATE", "DELETE", "REPLACE", "UPSERT", "CREATE", "DROP", "ALTER", "ATTACH",
    "DETACH", "PRAGMA", "VACUUM", "REINDEX", "ANALYZE", "BEGIN", "COMMIT", "END", "ROLLBACK",
    "SAVEPOINT", "RELEASE", "EXPLAIN",
})


# --------------------------------------------------------------------------- results

@dataclass
class ExecResult:
    """Rows of one query: ``rows`` are tuples of int / float / str / bytes / None."""

    columns: list[str]
    rows: list[tuple]
    elapsed_s: float
    truncated: bool = False
    db_path: str | None = None
    sql: str = ""

    def preview(self, max_rows: int = 5) -> dict:
        """A JSON-friendly head of the result: ``{"columns", "rows", "n_rows", "truncated"}``."""
        return {
            "columns": list(self.columns),
            "rows": [[_json_cell(v) for v in row] for row in self.rows[:max_rows]],
            "n_rows": len(self.rows),
            "truncated": self.truncated,
        }


@dataclass
class ExecOutcome:
    """What :func:`try_execute` returns: exactly one of ``result`` / ``error`` is set."""

    result: ExecResult | None = None
    error: SQLExecutionError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _json_cell(v: Any) -> Any:
    if isinstance(v, bytes):
        return f"<{len(v)} bytes>"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


# --------------------------------------------------------------------------- statement check

def split_statements(sql: str) -> list[str]:
    """Split SQL text on top-level ``;`` (quotes and comments understood).

    Returns the statements that hold more than whitespace and comments, each stripped.
    An unterminated quote or block comment is left for SQLite to report as a syntax error.
    """
    return sql_lexer.split_statements(sql)


def _first_keyword(stmt: str) -> str:
    """The first word of a statement, skipping leading comments."""
    return sql_lexer.first_keyword(stmt)


def check_statement(sql: str, where: str = "<sql>") -> str:
    """Return the single query in ``sql`` or raise ``SQLExecutionError`` (kind "refused" or
    "syntax"). ``where`` names the database in the message."""
    if not isinstance(sql, str) or not sql.strip():
        raise SQLExecutionError(f"SQL refused on {where}: the query is empty", sql, "syntax")
    statements = split_statements(sql)
    if not statements:
        raise SQLExecutionError(f"SQL refused on {where}: the query holds only comments",
                                sql, "syntax")
    if len(statements) > 1:
        raise SQLExecutionError(
            f"SQL refused on {where}: {len(statements)} statements in one query; "
            "only one SELECT may run at a time", sql, "refused")
    stmt = statements[0]
    first = _first_keyword(stmt)
    if first not in ALLOWED_FIRST_KEYWORDS and first not in REFUSED_FIRST_KEYWORDS:
        raise SQLExecutionError(
            f"syntax error on {where}: the query starts with {stmt[:30]!r}, not with "
            "SELECT / WITH / VALUES", sql, "syntax")
    if first not in ALLOWED_FIRST_KEYWORDS:
        raise SQLExecutionError(
            f"SQL refused on {where}: {first or stmt[:20]!r} statements are not allowed; "
            "the executor is read-only and runs SELECT / WITH / VALUES queries only",
            sql, "refused")
    return stmt


# --------------------------------------------------------------------------- execution

def _limits():
    from .sqlengine import Limits

    return Limits(MAX_OPEN_CONNECTIONS, SCHEMA_BUILD_TIMEOUT_S, MAX_VALUE_BYTES, PROGRESS_EVERY)


def _get_pool():
    from . import sqlpool

    return sqlpool.get_pool(MAX_WORKERS, MEMORY_LIMIT_BYTES, MAX_RESULT_BYTES)


def _dispatch(kind: str, target: str, shown: str, sql: str, timeout_s: float | None,
              max_rows: int, truncate: bool, double_quoted_strings: bool | None) -> ExecResult:
    from . import sqlpool

    dqs = DOUBLE_QUOTED_STRINGS if double_quoted_strings is None else bool(double_quoted_strings)
    limited = bool(timeout_s) and timeout_s > 0
    # The worker stops the query itself at timeout_s (layer 5); the kill at the hard deadline
    # is for work SQLite cannot interrupt. Building a schema has its own limit on top.
    hard = None
    if limited:
        hard = timeout_s + HARD_DEADLINE_GRACE_S + (SCHEMA_BUILD_TIMEOUT_S if kind == "schema"
                                                    else 0.0)
    request = ("run", kind, target, shown, sql, timeout_s if limited else None, int(max_rows),
               bool(truncate), dqs, _limits())
    try:
        reply = _get_pool().call(request, hard, sql)
    except sqlpool.WorkerTimeout:
        raise SQLExecutionError(
            f"SQL timed out on {shown}: stopped after {timeout_s:g} s (timeout_s); the query "
            "did not yield to the time limit, so the worker process running it was killed",
            sql, "timeout") from None
    except sqlpool.WorkerDied as e:
        kind_ = "memory" if e.out_of_memory else "error"
        raise SQLExecutionError(f"SQL error on {shown}: {e}; the query's result is lost (the "
                                "next query starts a new worker)", sql, kind_) from None
    except sqlpool.WorkerStartError as e:
        raise SQLExecutionError(f"SQL error on {shown}: {e}", sql, "error") from None
    if reply[0] == "ok":
        _, columns, rows, elapsed, truncated = reply
        return ExecResult(columns, rows, elapsed, truncated, shown, sql)
    _, message, kind_, err_sql = reply
    raise SQLExecutionError(message, err_sql, kind_)


def execute(db_path: str | os.PathLike, sql: str, *, timeout_s: float | None = DEFAULT_TIMEOUT_S,
            max_rows: int = DEFAULT_MAX_ROWS, truncate: bool = False,
            double_quoted_strings: bool | None = None) -> ExecResult:
    """Run one read-only query on the SQLite file ``db_path``.

    ``timeout_s`` bounds opening, execution and fetching (``None`` or 0: no limit); the call
    returns within ``timeout_s + HARD_DEADLINE_GRACE_S`` whatever the query does. More than
    ``max_rows`` rows raise ``kind="too_many_rows"``, or with ``truncate=True`` return the first
    ``max_rows`` with ``truncated=True``. ``double_quoted_strings=True`` lets a double-quoted
    name that is no column be a string literal, as old SQLite did (default
    ``DOUBLE_QUOTED_STRINGS``: no, it is an error). Raises :class:`SQLExecutionError`.
    """
    return _dispatch("file", os.path.abspath(os.fspath(db_path)), str(db_path), sql,
                     timeout_s, max_rows, truncate, double_quoted_strings)


def execute_on_schema(schema_sql: str, sql: str, *, timeout_s: float | None = DEFAULT_TIMEOUT_S,
                      max_rows: int = DEFAULT_MAX_ROWS, truncate: bool = False,
                      double_quoted_strings: bool | None = None) -> ExecResult:
    """Run a query on an empty in-memory database built from ``schema_sql`` (CREATE TABLE
    statements, as in a record's ``schema``). Checks that a query compiles and runs against the
    schema when no database file exists (sql-create-context, NSQL); the rows are empty-table
    answers. Same guards and errors as :func:`execute`; building the schema may take
    ``SCHEMA_BUILD_TIMEOUT_S`` on top of ``timeout_s``."""
    key = hashlib.sha1(schema_sql.encode("utf-8")).hexdigest()
    return _dispatch("schema", schema_sql, f"<in-memory schema {key[:8]}>", sql, timeout_s,
                     max_rows, truncate, double_quoted_strings)


def try_execute(db_path: str | os.PathLike | None, sql: str, *, schema_sql: str | None = None,
                **kwargs) -> ExecOutcome:
    """:func:`execute` (or :func:`execute_on_schema` when ``db_path`` is None) that returns its
    error instead of raising it; for evaluation loops."""
    try:
        if db_path is not None:
            return ExecOutcome(result=execute(db_path, sql, **kwargs))
        if schema_sql is not None:
            return ExecOutcome(result=execute_on_schema(schema_sql, sql, **kwargs))
        return ExecOutcome(error=SQLExecutionError(
            "no database: the record has neither a db_path nor a schema", sql, "no_database"))
    except SQLExecutionError as e:
        if e.sql is None:
            e.sql = sql
        return ExecOutcome(error=e)


def close_all() -> None:
    """Close the workers' cached connections (they are reopened on demand; the workers stay)."""
    from . import sqlpool

    pool = sqlpool.current_pool()
    if pool is not None:
        pool.broadcast(("close",))


def shutdown() -> None:
    """Stop the worker processes now (the next query starts new ones; they also stop when this
    process exits)."""
    from . import sqlpool

    sqlpool.shutdown()


# --------------------------------------------------------------------------- display

def _display(v: Any, width: int) -> str:
    if v is None:
        text = "NULL"
    elif isinstance(v, bytes):
        text = f"<{len(v)} bytes>"
    elif isinstance(v, float):
        text = f"{v:.10g}"
    else:
        text = str(v)
    text = text.replace("\n", " ").replace("\t", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(result: ExecResult, max_rows: int = 20, max_width: int = 40) -> str:
    """The result as an aligned text table with a ``(N rows, T s)`` footer; at most
    ``max_rows`` rows and ``max_width`` characters a cell are shown."""
    if not result.columns:
        return f"(no columns, {result.elapsed_s:.3f} s)"
    shown = result.rows[:max_rows]
    header = [_display(c, max_width) for c in result.columns]
    cells = [[_display(v, max_width) for v in row] for row in shown]
    widths = [max([len(header[i])] + [len(r[i]) for r in cells]) for i in range(len(header))]
    numeric = [bool(shown) and all(isinstance(row[i], (int, float)) or row[i] is None
                                   for row in shown) for i in range(len(header))]

    def line(values):
        return " | ".join(v.rjust(w) if num else v.ljust(w)
                          for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [line(header), "-+-".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    n = len(result.rows)
    more = n - len(shown)
    if more > 0:
        out.append(f"... {more} more row{'s' if more != 1 else ''}")
    total = f"{n}+ rows (truncated)" if result.truncated else f"{n} row{'s' if n != 1 else ''}"
    out.append(f"({total}, {result.elapsed_s:.3f} s)")
    return "\n".join(out)
