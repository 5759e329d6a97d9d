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
   bare ``REINDEX`` (SQLite does not consult it), which the read-only open refuses.
2. **Read-only, immutable open.** The file is opened through the URI
   ``file:<path>?mode=ro&immutable=1``: SQLite cannot write it, takes no locks and creates no
   ``-journal``/``-wal``/``-shm`` files beside it (a database in WAL mode with a live ``-wal``
   file is opened ``mode=ro`` without ``immutable``, so committed WAL content is seen). A cached
   connection is reopened when the file's inode, size or mtime changes, so ``immutable`` never
   serves stale pages of a file rewritten between queries.
3. **Connection settings**, applied before the authorizer is installed: ``PRAGMA query_only=1``
   (SQLite refuses any change, including ``CREATE TEMP TABLE``), ``PRAGMA trusted_schema=0``
   (functions with side effects cannot run from views or triggers stored in the file), and
   limits: no attached databases (``SQLITE_LIMIT_ATTACHED=0``) and strings/blobs capped at
   ``MAX_VALUE_BYTES`` (``zeroblob(2e9)`` cannot exhaust memory). Extension loading is never
   enabled (``enable_load_extension`` is not called; many Python builds lack it entirely).
4. **Authorizer** (``set_authorizer``), deny by default. Allowed: reading tables and columns
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
5. **Time limit.** A progress handler runs every ``PROGRESS_EVERY`` virtual-machine steps and
   interrupts the query once ``timeout_s`` has passed, during execution and while rows are
   fetched: runaway recursive CTEs and huge cross joins stop within a few milliseconds of the
   limit.
6. **Row cap.** Rows are fetched in chunks; past ``max_rows`` the query stops with
   ``kind="too_many_rows"`` (or, with ``truncate=True``, the first ``max_rows`` rows come back
   with ``truncated=True``), so ``SELECT * FROM a, b, c`` cannot fill memory.

Errors are :class:`~mlx_text2sql.errors.SQLExecutionError` with ``.kind`` one of ``"syntax"``,
``"refused"``, ``"timeout"``, ``"too_many_rows"``, ``"no_database"``, ``"error"`` and a message
naming the database and SQLite's own words.

:func:`execute_on_schema` builds an empty in-memory database from a record's CREATE TABLE
text (for data without a database file); the text is data too, so while it builds only
creating tables, indexes and views and inserting rows into that in-memory database is allowed
(no ATTACH, pragmas or extension functions), within ``SCHEMA_BUILD_TIMEOUT_S``; then the same
guards as above apply.

Every connection also carries the collation ``CASEFOLD`` (Unicode case-insensitive, Python's
``str.casefold``), which :func:`mlx_text2sql.metrics.case_insensitive_sql` uses for WikiSQL.

Connections are cached per thread and per database path (LRU of ``MAX_OPEN_CONNECTIONS``), so
evaluating thousands of queries does not reopen files; :func:`close_all` closes this thread's.
Text that is not valid UTF-8 (some Spider databases hold Latin-1 bytes) is decoded with
replacement characters instead of failing the query.

Pure Python: no MLX import.
"""

from __future__ import annotations

import hashlib
import math
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SQLExecutionError
from .sql import lexer as sql_lexer

__all__ = [
    "ExecResult", "ExecOutcome", "execute", "try_execute", "execute_on_schema",
    "check_statement", "split_statements", "format_table", "close_all",
    "DENIED_FUNCTIONS",
]

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_ROWS = 10_000
MAX_OPEN_CONNECTIONS = 16
MAX_VALUE_BYTES = 16 * 1024 * 1024
# A collation every connection carries: Unicode case-insensitive comparison (SQLite's own
# NOCASE folds ASCII letters only, so 'Şımarık' would not equal 'şımarık').
CASEFOLD_COLLATION = "CASEFOLD"
PROGRESS_EVERY = 1000  # VM instructions between deadline checks: ~10 µs of work each

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

_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE}

_SCHEMA_BUILD_ACTIONS = {sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_CREATE_INDEX,
                         sqlite3.SQLITE_CREATE_VIEW, sqlite3.SQLITE_INSERT,
                         sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_REINDEX}
SCHEMA_BUILD_TIMEOUT_S = 10.0

_ACTION_NAMES = {getattr(sqlite3, n): n[len("SQLITE_"):] for n in dir(sqlite3)
                 if n.startswith("SQLITE_") and n[len("SQLITE_"):] in {
                     "ALTER_TABLE", "ANALYZE", "ATTACH", "CREATE_INDEX", "CREATE_TABLE",
                     "CREATE_TEMP_INDEX", "CREATE_TEMP_TABLE", "CREATE_TEMP_TRIGGER",
                     "CREATE_TEMP_VIEW", "CREATE_TRIGGER", "CREATE_VIEW", "CREATE_VTABLE",
                     "DELETE", "DETACH", "DROP_INDEX", "DROP_TABLE", "DROP_TEMP_INDEX",
                     "DROP_TEMP_TABLE", "DROP_TEMP_TRIGGER", "DROP_TEMP_VIEW", "DROP_TRIGGER",
                     "DROP_VIEW", "DROP_VTABLE", "FUNCTION", "INSERT", "PRAGMA", "READ",
                     "REINDEX", "SAVEPOINT", "SELECT", "TRANSACTION", "UPDATE", "RECURSIVE"}}


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


# --------------------------------------------------------------------------- guarded connection

class _Guard:
    """Authorizer + progress handler state of one connection."""

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.timed_out = False
        self.denied: str | None = None

    def authorize(self, action: int, arg1, arg2, db_name, source) -> int:
        if action in _ALLOWED_ACTIONS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION:
            if (arg2 or "").lower() not in DENIED_FUNCTIONS:
                return sqlite3.SQLITE_OK
            what = f"function {arg2}()"
        elif action == sqlite3.SQLITE_PRAGMA:
            what = f"PRAGMA {arg1}" + (f" = {arg2}" if arg2 is not None else "")
        else:
            name = _ACTION_NAMES.get(action, f"action {action}").replace("_", " ")
            target = arg1 or arg2
            what = name + (f" {target}" if target else "")
        if self.denied is None:
            self.denied = what
        return sqlite3.SQLITE_DENY

    def authorize_schema_build(self, action: int, arg1, arg2, db_name, source) -> int:
        """While a record's schema text builds an in-memory database: creating tables,
        indexes and views and inserting rows in ``main`` is also allowed."""
        if action in _SCHEMA_BUILD_ACTIONS and db_name in ("main", None):
            return sqlite3.SQLITE_OK
        return self.authorize(action, arg1, arg2, db_name, source)

    def progress(self) -> int:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            self.timed_out = True
            return 1  # non-zero interrupts the statement
        return 0


@dataclass
class _Conn:
    conn: sqlite3.Connection
    guard: _Guard
    signature: tuple = ()
    lenient_text: bool = False


def _casefold_compare(a: str, b: str) -> int:
    a, b = a.casefold(), b.casefold()
    return (a > b) - (a < b)


def _lenient_text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _harden(conn: sqlite3.Connection) -> _Guard:
    # Settings first: once the authorizer is in place these PRAGMAs would be denied too.
    conn.execute("PRAGMA query_only = 1")
    try:
        conn.execute("PRAGMA trusted_schema = 0")
    except sqlite3.DatabaseError:  # SQLite < 3.31 has no trusted_schema; nothing to turn off
        pass
    if hasattr(conn, "setlimit"):  # Python >= 3.11
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    conn.create_collation(CASEFOLD_COLLATION, _casefold_compare)
    guard = _Guard()
    conn.set_authorizer(guard.authorize)
    conn.set_progress_handler(guard.progress, PROGRESS_EVERY)
    return guard


class _Cache(threading.local):
    def __init__(self) -> None:
        self.files: OrderedDict[str, _Conn] = OrderedDict()
        self.schemas: OrderedDict[str, _Conn] = OrderedDict()


_cache = _Cache()


def _evict(table: OrderedDict, keep: int) -> None:
    while len(table) > keep:
        _, old = table.popitem(last=False)
        old.conn.close()


def close_all() -> None:
    """Close this thread's cached connections (they are reopened on demand)."""
    for table in (_cache.files, _cache.schemas):
        while table:
            table.popitem()[1].conn.close()


def _file_connection(db_path: str | os.PathLike) -> tuple[_Conn, str]:
    path = Path(db_path)
    shown = str(db_path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SQLExecutionError(f"no database at {shown}: the file does not exist",
                                kind="no_database") from None
    except OSError as e:
        raise SQLExecutionError(f"no database at {shown}: {e.strerror}",
                                kind="no_database") from None
    if not path.is_file():
        raise SQLExecutionError(f"no database at {shown}: not a regular file", kind="no_database")
    if st.st_size == 0:
        # SQLite would treat it as a valid database without tables: every query would fail
        # with "no such table", blaming the query for a missing database.
        raise SQLExecutionError(f"no database at {shown}: the file is empty (0 bytes)",
                                kind="no_database")
    key = str(path.resolve())
    signature = (st.st_ino, st.st_size, st.st_mtime_ns)
    cached = _cache.files.get(key)
    if cached is not None:
        if cached.signature == signature:
            _cache.files.move_to_end(key)
            return cached, shown
        cached.conn.close()
        del _cache.files[key]

    wal = Path(key + "-wal")
    live_wal = wal.exists() and wal.stat().st_size > 0
    # immutable=1: no locking and no journal/-wal/-shm files; only safe when no -wal file
    # holds committed pages that the main file lacks.
    uri = Path(key).as_uri() + ("?mode=ro" if live_wal else "?mode=ro&immutable=1")
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=True)
        # Reading the schema now turns "file is not a database" into an open-time error.
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        guard = _harden(conn)
    except sqlite3.DatabaseError as e:
        raise SQLExecutionError(f"no database at {shown}: {e}", kind="no_database") from None
    entry = _Conn(conn, guard, signature)
    _cache.files[key] = entry
    _evict(_cache.files, MAX_OPEN_CONNECTIONS)
    return entry, shown


def _schema_connection(schema_sql: str) -> tuple[_Conn, str]:
    key = hashlib.sha1(schema_sql.encode("utf-8")).hexdigest()
    shown = f"<in-memory schema {key[:8]}>"
    cached = _cache.schemas.get(key)
    if cached is not None:
        _cache.schemas.move_to_end(key)
        return cached, shown
    conn = sqlite3.connect(":memory:", isolation_level=None)
    # The schema text comes from a data file: while it builds, only tables, indexes, views
    # and rows in this in-memory database may be created (no ATTACH of a real file, no
    # pragmas, no extensions), and a runaway INSERT ... SELECT is stopped by the clock.
    build = _Guard()
    build.deadline = time.perf_counter() + SCHEMA_BUILD_TIMEOUT_S
    conn.set_authorizer(build.authorize_schema_build)
    conn.set_progress_handler(build.progress, PROGRESS_EVERY)
    try:
        conn.executescript(schema_sql)
    except sqlite3.DatabaseError as e:
        conn.close()
        reason = f"{build.denied} is not allowed in a schema" if build.denied else str(e)
        if build.timed_out:
            reason = f"building it took more than {SCHEMA_BUILD_TIMEOUT_S:g} s"
        raise SQLExecutionError(f"no database at {shown}: the schema does not build ({reason})",
                                kind="no_database") from None
    conn.set_authorizer(None)
    conn.set_progress_handler(None, 0)
    entry = _Conn(conn, _harden(conn))
    _cache.schemas[key] = entry
    _evict(_cache.schemas, MAX_OPEN_CONNECTIONS)
    return entry, shown


# --------------------------------------------------------------------------- execution

_SYNTAX_MARKERS = ("syntax error", "incomplete input", "unrecognized token", "unterminated")


def _classify(e: sqlite3.Error, guard: _Guard) -> tuple[str, str]:
    msg = str(e)
    if guard.timed_out or getattr(e, "sqlite_errorname", "") == "SQLITE_INTERRUPT":
        return "timeout", msg
    if guard.denied is not None or msg.startswith("not authorized"):
        reason = f"{guard.denied} is not allowed" if guard.denied else msg
        return "refused", f"{reason} (the executor is read-only)"
    if "readonly" in msg or "read-only" in msg or "query_only" in msg:
        return "refused", f"{msg} (the executor is read-only)"
    if any(m in msg for m in _SYNTAX_MARKERS):
        return "syntax", msg
    if isinstance(e, sqlite3.ProgrammingError) and "one statement" in msg:
        return "refused", "only one statement may run at a time"
    return "error", msg


_KIND_WORDS = {"syntax": "syntax error", "refused": "SQL refused", "timeout": "SQL timed out",
               "error": "SQL error"}


def _run(entry: _Conn, shown: str, sql: str, timeout_s: float | None, max_rows: int,
         truncate: bool) -> ExecResult:
    stmt = check_statement(sql, shown)
    guard = entry.guard
    guard.denied, guard.timed_out = None, False
    conn = entry.conn
    for attempt in (0, 1):
        start = time.perf_counter()
        guard.deadline = start + timeout_s if timeout_s and timeout_s > 0 else None
        cursor = None
        try:
            cursor = conn.execute(stmt)
            columns = [d[0] for d in cursor.description or ()]
            rows: list[tuple] = []
            truncated = False
            chunk = max(1, min(1000, max_rows + 1))
            while True:
                batch = cursor.fetchmany(chunk)
                if not batch:
                    break
                rows.extend(batch)
                if len(rows) > max_rows:
                    if not truncate:
                        raise SQLExecutionError(
                            f"SQL returned too many rows on {shown}: more than {max_rows} "
                            "(raise max_rows, or add LIMIT)", sql, "too_many_rows")
                    del rows[max_rows:]
                    truncated = True
                    break
            return ExecResult(columns, rows, time.perf_counter() - start, truncated,
                              shown, sql)
        except sqlite3.OperationalError as e:
            # Invalid UTF-8 in a text cell: retry once decoding with replacement characters.
            if attempt == 0 and not entry.lenient_text and "decode" in str(e).lower():
                entry.lenient_text = True
                conn.text_factory = _lenient_text
                continue
            kind, detail = _classify(e, guard)
            raise _error(kind, detail, shown, sql, timeout_s) from None
        except (sqlite3.DatabaseError, sqlite3.ProgrammingError, sqlite3.Warning,
                OverflowError, MemoryError) as e:
            if isinstance(e, sqlite3.Error):
                kind, detail = _classify(e, guard)
            else:
                kind, detail = "error", f"{type(e).__name__}: {e}"
            raise _error(kind, detail, shown, sql, timeout_s) from None
        finally:
            guard.deadline = None
            if cursor is not None:
                cursor.close()
    raise AssertionError("unreachable")  # pragma: no cover


def _error(kind: str, detail: str, shown: str, sql: str, timeout_s) -> SQLExecutionError:
    if kind == "timeout":
        return SQLExecutionError(
            f"SQL timed out on {shown}: stopped after {timeout_s:g} s (timeout_s)", sql, kind)
    return SQLExecutionError(f"{_KIND_WORDS[kind]} on {shown}: {detail}", sql, kind)


def execute(db_path: str | os.PathLike, sql: str, *, timeout_s: float | None = DEFAULT_TIMEOUT_S,
            max_rows: int = DEFAULT_MAX_ROWS, truncate: bool = False) -> ExecResult:
    """Run one read-only query on the SQLite file ``db_path``.

    ``timeout_s`` bounds execution and fetching (``None`` or 0: no limit). More than
    ``max_rows`` rows raise ``kind="too_many_rows"``, or with ``truncate=True`` return the first
    ``max_rows`` with ``truncated=True``. Raises :class:`SQLExecutionError`.
    """
    entry, shown = _file_connection(db_path)
    return _run(entry, shown, sql, timeout_s, max_rows, truncate)


def execute_on_schema(schema_sql: str, sql: str, *, timeout_s: float | None = DEFAULT_TIMEOUT_S,
                      max_rows: int = DEFAULT_MAX_ROWS, truncate: bool = False) -> ExecResult:
    """Run a query on an empty in-memory database built from ``schema_sql`` (CREATE TABLE
    statements, as in a record's ``schema``). Checks that a query compiles and runs against the
    schema when no database file exists (sql-create-context, NSQL); the rows are empty-table
    answers. Same guards and errors as :func:`execute`."""
    entry, shown = _schema_connection(schema_sql)
    return _run(entry, shown, sql, timeout_s, max_rows, truncate)


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
