"""What asking a question takes and gives back: options, questions, answers, timings, and
read-only execution of a query (:func:`execute_sql`).

Pure Python (no MLX): a server or a script can build options and read answers without a model.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConfigError, InputError

NO_SQL = "no_sql"  # error_kind of a reply that holds no SQL query


@dataclass(frozen=True)
class AskOptions:
    """How a question is answered.

    execute:       run the final SQL read-only on the database (or, for a schema given as
                   text, on an empty database built from it) and return the rows.
    max_rows:      rows returned; ``truncated`` is set when the query had more.
    timeout_s:     execution time limit per query, also for the checks of ``exec_guided``
                   (0 or None: no limit).
    max_tokens, temp, top_p, seed: generation (temp 0: greedy).
    batch_size:    prompts decoded together.
    fix_values:    value repair of miscopied literals against the database (:mod:`mlx_text2sql.repair`).
    fix_names:     name repair of tables and columns the database does not have
                   (:mod:`mlx_text2sql.name_repair`); before value repair when both are on.
    constrain_names: schema-constrained greedy decoding (:mod:`mlx_text2sql.sql.constrain`):
                   every table and column name the query writes is one its database (or
                   schema) has, the model's most likely choice among them; greedy only.
    constrained_retry: a greedy query that raises an error on its database (after repair) is
                   decoded once more under the name constraint (as ``constrain_names``),
                   repaired, and replaced by that query when it runs (:mod:`mlx_text2sql.guided`).
    exec_guided:   N: a query that fails on the database (an error, or no rows) is replaced by
                   the result most of N sampled replies agree on (:mod:`mlx_text2sql.guided`); 0: off.
    vote:          N: self-consistency voting on every question: the greedy query and N sampled
                   replies vote with their execution results (an empty result is an answer, an
                   error has no vote; :mod:`mlx_text2sql.guided`); 0: off. For data where the
                   empty set is a common right answer (Spider); not with ``exec_guided``.
    guided_temp, guided_top_p: sampling of those replies.
    value_hints:   add the ``Values:`` line for databases; None: as the adapter was trained.
    select_schema: for databases, with no tables named: None/True show the tables the question
                   is about (a database of at most 3 tables is shown whole); False: every table.
    sample_rows:   rows shown per table of a database; None: as trained.
    """

    execute: bool = True
    max_rows: int = 100
    timeout_s: float = 10.0
    max_tokens: int = 256
    temp: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    fix_values: bool = False
    fix_names: bool = False
    constrain_names: bool = False
    constrained_retry: bool = False
    exec_guided: int = 0
    vote: int = 0
    guided_temp: float = 0.7
    guided_top_p: float = 0.95
    value_hints: bool | None = None
    select_schema: bool | None = None
    sample_rows: int | None = None
    batch_size: int = 16

    @property
    def guided_samples(self) -> int:
        """Replies decoded per re-asked question (``vote`` or ``exec_guided`` samples, 1 for
        ``constrained_retry``; 0: none)."""
        return self.vote or self.exec_guided or int(self.constrained_retry)

    @property
    def guided_mode(self) -> str:
        """:class:`~mlx_text2sql.guided.ExecutionGuide`'s mode: "vote", "constrained" or "failed"."""
        return "vote" if self.vote else "constrained" if self.constrained_retry else "failed"

    def problems(self) -> list[str]:
        """Every invalid setting, as messages naming the field and the range it needs."""
        out = []
        if self.max_rows < 1:
            out.append("max_rows must be at least 1")
        if self.timeout_s is not None and self.timeout_s < 0:
            out.append("timeout_s must be 0 (no limit) or more")
        if self.max_tokens < 1:
            out.append("max_tokens must be at least 1")
        if self.temp < 0:
            out.append("temp must be 0 or more")
        if not 0 < self.top_p <= 1:
            out.append("top_p must be in (0, 1]")
        if self.batch_size < 1:
            out.append("batch_size must be at least 1")
        if self.constrain_names and self.temp != 0:
            out.append("constrain_names needs greedy decoding (temp 0)")
        if self.constrained_retry and (self.vote or self.exec_guided):
            out.append("constrained_retry, vote and exec_guided are three ways to re-ask: choose one")
        if self.constrained_retry and self.constrain_names:
            out.append("constrained_retry re-decodes what unconstrained decoding got wrong: not with constrain_names")
        if self.exec_guided < 0:
            out.append("exec_guided must be 0 (off) or a number of samples")
        if self.vote < 0:
            out.append("vote must be 0 (off) or a number of samples")
        if self.vote and self.exec_guided:
            out.append("vote and exec_guided are two ways to use samples: choose one")
        if (self.vote or self.exec_guided) and self.guided_temp <= 0:
            out.append("guided_temp must be above 0 (the alternatives are sampled)")
        if (self.vote or self.exec_guided) and not 0 < self.guided_top_p <= 1:
            out.append("guided_top_p must be in (0, 1]")
        if self.sample_rows is not None and self.sample_rows < 0:
            out.append("sample_rows must be 0 or more")
        return out

    def check(self) -> "AskOptions":
        """Raise :class:`~mlx_text2sql.errors.ConfigError` listing every invalid setting."""
        problems = self.problems()
        if problems:
            raise ConfigError(problems)
        return self


@dataclass
class Question:
    """One item of :meth:`Text2SQL.ask_many <mlx_text2sql.api.Text2SQL.ask_many>` with its own
    database or schema (None: the call's).

    tables:   with a database, the tables to show ([] = all; None: see ``AskOptions.select_schema``).
    key:      the caller's id, echoed in the :class:`Answer`.
    messages: a prompt built already (e.g. by ``Text2SQL.messages`` or a converted record),
              used as is; ``db`` / ``schema`` then only say where the query runs.
    case_insensitive: check queries with text compared without case (as WikiSQL is scored)
              in execution-guided decoding.
    double_quoted_strings: check queries with SQLite's default reading of a ``"value"`` that
              names no column (a string), as Spider's records are scored; None: off.
    """

    question: str
    db: str | os.PathLike | None = None
    schema: str | None = None
    tables: list[str] | None = None
    key: Any = None
    messages: list[dict] | None = None
    case_insensitive: bool = False
    double_quoted_strings: bool | None = None


@dataclass
class Timings:
    """Seconds spent on one answer.

    queue_s:   waiting before the call (set by callers that queue, such as a server).
    prompt_s:  building the prompt (schema read, table choice, value hints).
    decode_s:  model time of the greedy reply, from its prefill to its last token.
    guided_s:  execution-guided decoding's share (checks, sampling) for this question.
    execute_s: running the final query.
    total_s:   from the start of the call to its answers (one batched call: the same for all).
    """

    queue_s: float = 0.0
    prompt_s: float = 0.0
    decode_s: float = 0.0
    execute_s: float = 0.0
    total_s: float = 0.0
    guided_s: float = 0.0


@dataclass
class QueryResult:
    """A query's outcome on the read-only executor: rows or an error, never an exception.

    rows are JSON-friendly (bytes as ``"<N bytes>"``, non-finite floats as text); at most
    ``max_rows`` of them, ``truncated`` when the query had more. ``error_kind`` is the
    executor's kind (:class:`~mlx_text2sql.errors.SQLExecutionError`: "syntax", "refused",
    "timeout", "error", "no_database", ...). ``result`` keeps the executor's own result.
    """

    columns: list[str] | None = None
    rows: list[list] | None = None
    truncated: bool = False
    error_kind: str | None = None
    error: str | None = None
    execute_s: float = 0.0
    result: Any = field(default=None, repr=False, compare=False)


@dataclass
class Answer:
    """A question's answer. Failures are values: ``error_kind`` is ``"no_sql"`` when the reply
    holds no query, else the executor's kind for a query that failed.

    sql:         the final query (after value repair and execution-guided decoding), None
                 when the reply held none; ``sql_greedy``: the greedy reply's query before them.
    reply:       the raw model reply; ``messages``: the exact chat prompt sent.
    columns, rows, truncated: the result (None without ``execute``).
    value_fixes: value repair's changes, as dicts (table, column, old, new, ratio).
    name_fixes:  name repair's changes, as dicts (kind "table", "column", "qualifier" or "join",
                 table, old, new, score).
    guided:      execution-guided decoding's verdict when the greedy query was retried
                 (reason, changed, samples, usable, votes), else None.
    execution:   the executor's own result object (not part of :meth:`to_dict`).
    """

    question: str
    sql: str | None
    reply: str
    sql_greedy: str | None
    columns: list[str] | None
    rows: list[list] | None
    truncated: bool
    error_kind: str | None
    error: str | None
    timings: Timings
    messages: list[dict]
    db: str | None
    key: Any = None
    n_prompt_tokens: int = 0
    n_tokens: int = 0
    finish_reason: str = "stop"
    value_fixes: list[dict] = field(default_factory=list)
    name_fixes: list[dict] = field(default_factory=list)
    guided: dict | None = None
    execution: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        """A JSON-friendly dict of every field but ``execution``."""
        out = asdict(self)
        out.pop("execution", None)
        return out


@dataclass
class Completion:
    """One raw chat completion (:meth:`Text2SQL.complete <mlx_text2sql.api.Text2SQL.complete>`).

    finish_reason: "stop" (end of turn or a stop string) or "length" (hit max_tokens);
    n_cached_tokens: prompt tokens whose keys/values came from the shared-prefix cache.
    """

    text: str
    finish_reason: str
    n_prompt_tokens: int
    n_tokens: int
    n_cached_tokens: int = 0
    decode_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def run_query(db: str | os.PathLike | None, sql: str, *, schema: str | None = None,
              max_rows: int = 100, timeout_s: float | None = 10.0) -> QueryResult:
    """Run ``sql`` read-only on ``db`` (or an empty database built from ``schema``) with the
    executor's limits; the outcome as a :class:`QueryResult`."""
    import time

    from ..sqlexec import try_execute

    t = time.perf_counter()
    outcome = try_execute(None if db is None else db, sql, schema_sql=schema, timeout_s=timeout_s,
                          max_rows=max_rows, truncate=True)
    elapsed = time.perf_counter() - t
    if not outcome.ok:
        return QueryResult(error_kind=outcome.error.kind, error=str(outcome.error), execute_s=elapsed)
    preview = outcome.result.preview(max_rows)
    return QueryResult(columns=preview["columns"], rows=preview["rows"], truncated=preview["truncated"],
                       execute_s=elapsed, result=outcome.result)


def execute_sql(db: str | os.PathLike | None, sql: str, *, max_rows: int = 100, timeout_s: float = 10.0,
                schema: str | None = None) -> QueryResult:
    """Run one query through the read-only executor (no model).

    db:     a SQLite file; or None with ``schema``: CREATE TABLE text, run on an empty database.
    Invalid inputs raise: an empty query, no database and no schema (ConfigError), a file that
    is missing or not SQLite (InputError). A query that fails comes back as ``error_kind`` /
    ``error`` in the result.
    """
    problems = []
    if not isinstance(sql, str) or not sql.strip():
        problems.append("the query is empty: give SQL text")
    if db is None and schema is None:
        problems.append("no database: give db (a SQLite file) or schema (CREATE TABLE statements)")
    if max_rows < 1:
        problems.append("max_rows must be at least 1")
    if timeout_s is not None and timeout_s < 0:
        problems.append("timeout_s must be 0 (no limit) or more")
    if problems:
        raise ConfigError(problems)
    if db is not None:
        from ..schema_db import list_tables

        list_tables(db)  # InputError naming the file when it is missing or not a database
    elif not schema.strip():
        raise InputError("the schema is empty; give CREATE TABLE statements", "schema")
    return run_query(db, sql, schema=schema if db is None else None, max_rows=max_rows, timeout_s=timeout_s)
