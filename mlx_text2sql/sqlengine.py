"""Guarded SQLite connections and the execution of one query on them.

This is the code the executor's worker processes run (:mod:`mlx_text2sql.sqlworker`); callers
use :mod:`mlx_text2sql.sqlexec`, whose docstring lists the layers. Connections are ``apsw``
connections: apsw ships a current SQLite and exposes ``sqlite3_db_config``, which the
double-quoted-string switch needs. Imports neither MLX nor the rest of the package (only
:mod:`~mlx_text2sql.sqlexec` for the statement check and :mod:`~mlx_text2sql.errors`).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import apsw

from .errors import SQLExecutionError
from .sqlexec import CASEFOLD_COLLATION, DENIED_FUNCTIONS, check_statement


class Limits(NamedTuple):
    """Settings a caller sends with each query (read from :mod:`~mlx_text2sql.sqlexec`'s
    module constants at call time, so they can be changed without restarting workers)."""

    max_open: int
    schema_build_timeout_s: float
    max_value_bytes: int
    progress_every: int


_ALLOWED_ACTIONS = {apsw.SQLITE_SELECT, apsw.SQLITE_READ, apsw.SQLITE_RECURSIVE}

_SCHEMA_BUILD_ACTIONS = {apsw.SQLITE_CREATE_TABLE, apsw.SQLITE_CREATE_INDEX,
                         apsw.SQLITE_CREATE_VIEW, apsw.SQLITE_INSERT,
                         apsw.SQLITE_UPDATE, apsw.SQLITE_REINDEX}

_ACTION_NAMES = {getattr(apsw, "SQLITE_" + n): n for n in (
    "ALTER_TABLE", "ANALYZE", "ATTACH", "CREATE_INDEX", "CREATE_TABLE", "CREATE_TEMP_INDEX",
    "CREATE_TEMP_TABLE", "CREATE_TEMP_TRIGGER", "CREATE_TEMP_VIEW", "CREATE_TRIGGER",
    "CREATE_VIEW", "CREATE_VTABLE", "DELETE", "DETACH", "DROP_INDEX", "DROP_TABLE",
    "DROP_TEMP_INDEX", "DROP_TEMP_TABLE", "DROP_TEMP_TRIGGER", "DROP_TEMP_VIEW", "DROP_TRIGGER",
    "DROP_VIEW", "DROP_VTABLE", "FUNCTION", "INSERT", "PRAGMA", "READ", "REINDEX", "SAVEPOINT",
    "SELECT", "TRANSACTION", "UPDATE", "RECURSIVE")}

# Switches of sqlite3_db_config, all set on every connection (the last two exist since 3.49).
_DBCONFIG_OFF = ("SQLITE_DBCONFIG_DQS_DML", "SQLITE_DBCONFIG_DQS_DDL",
                 "SQLITE_DBCONFIG_TRUSTED_SCHEMA", "SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION",
                 "SQLITE_DBCONFIG_ENABLE_ATTACH_CREATE", "SQLITE_DBCONFIG_ENABLE_ATTACH_WRITE")
_DBCONFIG_ON = ("SQLITE_DBCONFIG_DEFENSIVE",)

_SYNTAX_MARKERS = ("syntax error", "incomplete input", "unrecognized token", "unterminated")
_KIND_WORDS = {"syntax": "syntax error", "refused": "SQL refused", "timeout": "SQL timed out",
               "memory": "SQL ran out of memory", "error": "SQL error"}


class _Guard:
    """Authorizer, progress handler and statement tracer state of one connection."""

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.timed_out = False
        self.denied: str | None = None
        self.statements = 0
        self.columns: list[str] = []

    def reset(self) -> None:
        self.deadline, self.timed_out, self.denied = None, False, None
        self.statements, self.columns = 0, []

    def authorize(self, action: int, arg1, arg2, db_name, source) -> int:
        if action in _ALLOWED_ACTIONS:
            return apsw.SQLITE_OK
        if action == apsw.SQLITE_FUNCTION:
            if (arg2 or "").lower() not in DENIED_FUNCTIONS:
                return apsw.SQLITE_OK
            what = f"function {arg2}()"
        elif action == apsw.SQLITE_PRAGMA:
            what = f"PRAGMA {arg1}" + (f" = {arg2}" if arg2 is not None else "")
        else:
            name = _ACTION_NAMES.get(action, f"action {action}").replace("_", " ")
            target = arg1 or arg2
            what = name + (f" {target}" if target else "")
        if self.denied is None:
            self.denied = what
        return apsw.SQLITE_DENY

    def authorize_schema_build(self, action: int, arg1, arg2, db_name, source) -> int:
        """While a record's schema text builds an in-memory database: creating tables,
        indexes and views and inserting rows in ``main`` is also allowed."""
        if action in _SCHEMA_BUILD_ACTIONS and db_name in ("main", None):
            return apsw.SQLITE_OK
        return self.authorize(action, arg1, arg2, db_name, source)

    def progress(self) -> bool:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            self.timed_out = True
            return True  # interrupts the statement
        return False

    def trace(self, cursor: apsw.Cursor, sql: str, bindings) -> bool:
        """Called after each statement is prepared, before it runs: keeps the result's column
        names (known even when no row comes) and stops a second statement from running."""
        self.statements += 1
        if self.statements > 1:
            return False
        self.columns = [d[0] for d in cursor.get_description()]
        return True


@dataclass
class _Conn:
    conn: apsw.Connection
    guard: _Guard
    signature: tuple = ()


def _casefold_compare(a: str, b: str) -> int:
    a, b = a.casefold(), b.casefold()
    return (a > b) - (a < b)


def _harden(conn: apsw.Connection, limits: Limits) -> _Guard:
    # Settings first: once the authorizer is in place these PRAGMAs would be denied too.
    conn.execute("PRAGMA query_only = 1")
    conn.execute("PRAGMA trusted_schema = 0")
    conn.execute("PRAGMA temp_store = MEMORY")  # sorts and temp b-trees never touch the disk
    for name in _DBCONFIG_OFF + _DBCONFIG_ON:
        op = getattr(apsw, name, None)
        if op is not None:
            conn.config(op, 1 if name in _DBCONFIG_ON else 0)
    conn.limit(apsw.SQLITE_LIMIT_ATTACHED, 0)
    conn.limit(apsw.SQLITE_LIMIT_LENGTH, limits.max_value_bytes)
    conn.create_collation(CASEFOLD_COLLATION, _casefold_compare)
    guard = _Guard()
    conn.set_authorizer(guard.authorize)
    conn.set_progress_handler(guard.progress, limits.progress_every)
    conn.exec_trace = guard.trace
    return guard


class Engine:
    """The connections of one worker: an LRU cache per database file (reopened when the file
    changes) and one per schema text."""

    def __init__(self) -> None:
        self.files: OrderedDict[str, _Conn] = OrderedDict()
        self.schemas: OrderedDict[str, _Conn] = OrderedDict()
        self.opened = 0  # connections opened so far (files and schemas)

    # ----------------------------------------------------------------------- connections

    @staticmethod
    def _evict(table: OrderedDict, keep: int) -> None:
        while len(table) > keep:
            _, old = table.popitem(last=False)
            old.conn.close()

    def close_all(self) -> None:
        for table in (self.files, self.schemas):
            while table:
                table.popitem()[1].conn.close()

    def file_connection(self, db_path: str | os.PathLike, shown: str, limits: Limits) -> _Conn:
        key = os.path.abspath(db_path)
        try:
            st = os.stat(key)
        except FileNotFoundError:
            raise SQLExecutionError(f"no database at {shown}: the file does not exist",
                                    kind="no_database") from None
        except OSError as e:
            raise SQLExecutionError(f"no database at {shown}: {e.strerror}",
                                    kind="no_database") from None
        # Checked on every query, so that a cached connection is never used on a file that
        # was replaced, truncated or rewritten (immutable=1 would serve stale pages).
        signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self.files.get(key)
        if cached is not None:
            if cached.signature == signature:
                self.files.move_to_end(key)
                return cached
            cached.conn.close()
            del self.files[key]
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the open; a directory, a device
            raise SQLExecutionError(f"no database at {shown}: not a regular file",
                                    kind="no_database")
        if st.st_size == 0:
            # SQLite would treat it as a valid database without tables: every query would fail
            # with "no such table", blaming the query for a missing database.
            raise SQLExecutionError(f"no database at {shown}: the file is empty (0 bytes)",
                                    kind="no_database")

        real = os.path.realpath(key)
        wal = real + "-wal"
        live_wal = os.path.exists(wal) and os.path.getsize(wal) > 0
        # immutable=1: no locking and no journal/-wal/-shm files; only safe when no -wal file
        # holds committed pages that the main file lacks.
        uri = Path(real).as_uri() + ("?mode=ro" if live_wal else "?mode=ro&immutable=1")
        conn = None
        try:
            conn = apsw.Connection(uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
            # Reading the schema now turns "file is not a database" into an open-time error.
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
            guard = _harden(conn, limits)
        except apsw.Error as e:
            if conn is not None:
                conn.close()
            raise SQLExecutionError(f"no database at {shown}: {e}", kind="no_database") from None
        entry = _Conn(conn, guard, signature)
        self.opened += 1
        self.files[key] = entry
        self._evict(self.files, limits.max_open)
        return entry

    def schema_connection(self, schema_sql: str, limits: Limits) -> tuple[_Conn, str]:
        key = hashlib.sha1(schema_sql.encode("utf-8")).hexdigest()
        shown = f"<in-memory schema {key[:8]}>"
        cached = self.schemas.get(key)
        if cached is not None:
            self.schemas.move_to_end(key)
            return cached, shown
        conn = apsw.Connection(":memory:")
        # The schema text comes from a data file: while it builds, only tables, indexes, views
        # and rows in this in-memory database may be created (no ATTACH of a real file, no
        # pragmas, no extensions), and a runaway INSERT ... SELECT is stopped by the clock.
        # Double-quoted strings stay allowed while it builds (the text is data we do not own).
        build = _Guard()
        build.deadline = time.perf_counter() + limits.schema_build_timeout_s
        conn.limit(apsw.SQLITE_LIMIT_ATTACHED, 0)
        conn.limit(apsw.SQLITE_LIMIT_LENGTH, limits.max_value_bytes)
        conn.set_authorizer(build.authorize_schema_build)
        conn.set_progress_handler(build.progress, limits.progress_every)
        try:
            for _ in conn.execute(schema_sql):
                pass
        except apsw.Error as e:
            conn.close()
            reason = f"{build.denied} is not allowed in a schema" if build.denied else str(e)
            if build.timed_out:
                reason = f"building it took more than {limits.schema_build_timeout_s:g} s"
            raise SQLExecutionError(f"no database at {shown}: the schema does not build "
                                    f"({reason})", kind="no_database") from None
        conn.set_authorizer(None)
        conn.set_progress_handler(None)
        entry = _Conn(conn, _harden(conn, limits))
        self.opened += 1
        self.schemas[key] = entry
        self._evict(self.schemas, limits.max_open)
        return entry, shown

    # ----------------------------------------------------------------------- execution

    def run_file(self, db_path: str, shown: str, sql: str, timeout_s: float | None,
                 max_rows: int, truncate: bool, limits: Limits,
                 double_quoted_strings: bool = False) -> tuple:
        """Open (or reuse) ``db_path`` and run ``sql``: ``(columns, rows, elapsed_s,
        truncated)``. ``timeout_s`` counts from this call. Raises SQLExecutionError."""
        start = time.perf_counter()
        entry = self.file_connection(db_path, shown, limits)
        return _run(entry, shown, sql, timeout_s, max_rows, truncate, start,
                    double_quoted_strings)

    def run_schema(self, schema_sql: str, sql: str, timeout_s: float | None, max_rows: int,
                   truncate: bool, limits: Limits, double_quoted_strings: bool = False) -> tuple:
        """Like :meth:`run_file` on an in-memory database built from ``schema_sql``;
        ``timeout_s`` counts once the schema is built."""
        entry, shown = self.schema_connection(schema_sql, limits)
        return _run(entry, shown, sql, timeout_s, max_rows, truncate, time.perf_counter(),
                    double_quoted_strings)


def _classify(e: BaseException, guard: _Guard) -> tuple[str, str]:
    msg = str(e)
    if guard.timed_out or isinstance(e, apsw.InterruptError):
        return "timeout", msg
    if isinstance(e, apsw.ExecTraceAbort):
        return "refused", "only one statement may run at a time"
    if guard.denied is not None or isinstance(e, apsw.AuthError) \
            or msg.startswith("not authorized"):
        reason = f"{guard.denied} is not allowed" if guard.denied else msg
        return "refused", f"{reason} (the executor is read-only)"
    if msg.startswith("unsafe use of"):
        return "refused", (f"{msg} (trusted_schema is off: views and triggers stored in the "
                           "file cannot call functions with side effects)")
    if isinstance(e, apsw.ReadOnlyError) or "readonly" in msg or "read-only" in msg \
            or "query_only" in msg:
        return "refused", f"{msg} (the executor is read-only)"
    if isinstance(e, (apsw.NoMemError, MemoryError)):
        return "memory", msg or "out of memory"
    if any(m in msg for m in _SYNTAX_MARKERS):
        return "syntax", msg
    return "error", msg


def _error(kind: str, detail: str, shown: str, sql: str, timeout_s) -> SQLExecutionError:
    if kind == "timeout":
        return SQLExecutionError(
            f"SQL timed out on {shown}: stopped after {timeout_s:g} s (timeout_s)", sql, kind)
    if kind == "memory":
        detail = f"{detail} (the worker's memory cap, MEMORY_LIMIT_BYTES, was reached)"
    return SQLExecutionError(f"{_KIND_WORDS[kind]} on {shown}: {detail}", sql, kind)


def _lenient_query(stmt: str, n_columns: int) -> str:
    """``stmt`` wrapped so that each text cell comes back as (``'text'``, its bytes): SQLite
    does not check that stored text is UTF-8, and apsw refuses to decode invalid text."""
    names = ", ".join(f'"_c{i}"' for i in range(n_columns))
    cells = ", ".join(f'typeof("_c{i}"), CASE WHEN typeof("_c{i}") = \'text\' '
                      f'THEN CAST("_c{i}" AS BLOB) ELSE "_c{i}" END' for i in range(n_columns))
    return f'WITH "_lenient"({names}) AS ({stmt}) SELECT {cells} FROM "_lenient"'


def _decode_lenient(row: tuple) -> tuple:
    return tuple(row[i + 1].decode("utf-8", "replace") if row[i] == "text" else row[i + 1]
                 for i in range(0, len(row), 2))


def _run(entry: _Conn, shown: str, sql: str, timeout_s: float | None, max_rows: int,
         truncate: bool, start: float, double_quoted_strings: bool) -> tuple:
    stmt = check_statement(sql, shown)
    guard = entry.guard
    guard.reset()
    conn = entry.conn
    if double_quoted_strings:
        conn.config(apsw.SQLITE_DBCONFIG_DQS_DML, 1)
    lenient = False
    try:
        for attempt in (0, 1):
            guard.deadline = start + timeout_s if timeout_s and timeout_s > 0 else None
            guard.statements = 0
            cursor = conn.cursor()
            try:
                query = _lenient_query(stmt, len(columns)) if lenient else stmt
                # Stop at max_rows + 1 rows: one more than allowed tells "too many" apart.
                # A statement compiled with the fallback must not be cached for strict runs.
                cursor.execute(query, can_cache=not double_quoted_strings)
                rows = list(itertools.islice(cursor, max_rows + 1))
                if not lenient:
                    columns = guard.columns
                else:
                    rows = [_decode_lenient(r) for r in rows]
                truncated = False
                if len(rows) > max_rows:
                    if not truncate:
                        raise SQLExecutionError(
                            f"SQL returned too many rows on {shown}: more than {max_rows} "
                            "(raise max_rows, or add LIMIT)", sql, "too_many_rows")
                    del rows[max_rows:]
                    truncated = True
                return columns, rows, time.perf_counter() - start, truncated
            except UnicodeDecodeError:
                # Invalid UTF-8 in a text cell: run it again reading text as bytes, decoded with
                # replacement characters.
                if attempt == 1:
                    raise
                columns, lenient = guard.columns, True
            finally:
                cursor.close(True)
    except SQLExecutionError:
        raise
    except (apsw.Error, UnicodeDecodeError, OverflowError, MemoryError) as e:
        kind, detail = _classify(e, guard)
        if isinstance(e, (UnicodeDecodeError, OverflowError)):
            detail = f"{type(e).__name__}: {e}"
        raise _error(kind, detail, shown, sql, timeout_s) from None
    finally:
        guard.deadline = None
        if double_quoted_strings:
            conn.config(apsw.SQLITE_DBCONFIG_DQS_DML, 0)
    raise AssertionError("unreachable")  # pragma: no cover
