"""``/v1/databases``, ``/v1/sql`` (a question -> SQL and its rows) and ``/v1/execute`` (SQL ->
rows). Each POST body is checked against the server's limits by a dependency before its
handler runs: first that the database exists (404), then each limit (422)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from .. import schemas as S
from ..context import ServerContext, at_most, server
from ..databases import Database

DEFAULT_ROWS = 100

router = APIRouter()


@dataclass(frozen=True)
class Checked:
    """A request within this server's limits, and the database it names."""

    req: S.SQLRequest | S.ExecuteRequest
    db: Database


async def checked_sql(req: S.SQLRequest, ctx: ServerContext = Depends(server)) -> Checked:
    db = ctx.database(req.database)
    limits = ctx.limits
    at_most(len(req.question), limits.max_question_chars, "the question's length")
    at_most(req.max_rows, limits.max_rows, "max_rows")
    at_most(req.max_tokens, limits.max_tokens, "max_tokens")
    at_most(req.exec_guided, limits.max_exec_guided, "exec_guided")
    return Checked(req, db)


async def checked_execute(req: S.ExecuteRequest, ctx: ServerContext = Depends(server)) -> Checked:
    db = ctx.database(req.database)
    at_most(len(req.sql), ctx.limits.max_sql_chars, "the SQL's length")
    at_most(req.max_rows, ctx.limits.max_rows, "max_rows")
    return Checked(req, db)


@router.get("/databases", response_model=S.DatabaseList)
async def list_databases(ctx: ServerContext = Depends(server)):
    data = [await run_in_threadpool(ctx.databases.summary, name) for name in ctx.databases.names]
    return S.DatabaseList(data=data)


@router.get("/databases/{name}", response_model=S.DatabaseInfo)
async def one_database(name: str, ctx: ServerContext = Depends(server)):
    return await run_in_threadpool(ctx.databases.summary, ctx.database(name).name)


@router.post("/sql", response_model=S.SQLResponse)
async def sql(request: Request, call: Checked = Depends(checked_sql), ctx: ServerContext = Depends(server)):
    from ...api import Question

    req, db = call.req, call.db
    item = Question(question=req.question, db=str(db.path), tables=req.tables)
    t0 = time.perf_counter()
    answer, job = await ctx.run_job(request, "ask", item, _ask_options(req, ctx))
    t = answer.timings
    return S.SQLResponse(
        database=db.name, question=req.question, sql=answer.sql, reply=answer.reply,
        sql_greedy=answer.sql_greedy, name_fixes=answer.name_fixes, value_fixes=answer.value_fixes,
        columns=answer.columns, rows=answer.rows,
        truncated=bool(answer.truncated), error_kind=answer.error_kind,
        error=ctx.hide_paths(answer.error) if answer.error else None,
        timings=S.Timings(queue_s=job.queue_s, prompt_s=t.prompt_s, decode_s=t.decode_s,
                          execute_s=t.execute_s, total_s=time.perf_counter() - t0),
        model=ctx.model_id)


def _ask_options(req: S.SQLRequest, ctx: ServerContext):
    """The library's options for one ``/v1/sql`` request; what it leaves out, the server's
    defaults and limits decide."""
    from ...api import AskOptions

    limits = ctx.limits
    return AskOptions(execute=req.execute, max_rows=req.max_rows or min(DEFAULT_ROWS, limits.max_rows),
                      timeout_s=limits.execute_timeout_s, max_tokens=req.max_tokens or limits.default_max_tokens,
                      temp=req.temperature, top_p=req.top_p, seed=req.seed, fix_values=req.fix_values,
                      fix_names=req.fix_names, constrain_names=req.constrain_names,
                      constrained_retry=req.constrained_retry,
                      exec_guided=req.exec_guided, value_hints=req.value_hints,
                      select_schema=req.select_schema, sample_rows=req.sample_rows,
                      batch_size=limits.max_batch)


@router.post("/execute", response_model=S.ExecuteResponse)
async def execute(call: Checked = Depends(checked_execute), ctx: ServerContext = Depends(server)):
    from ...api import execute_sql

    req, db = call.req, call.db
    r = await run_in_threadpool(execute_sql, db.path, req.sql,
                                max_rows=req.max_rows or min(DEFAULT_ROWS, ctx.limits.max_rows),
                                timeout_s=ctx.limits.execute_timeout_s)
    return S.ExecuteResponse(database=db.name, sql=req.sql, columns=r.columns, rows=r.rows,
                             truncated=bool(r.truncated), error_kind=r.error_kind,
                             error=ctx.hide_paths(r.error) if r.error else None,
                             execute_s=r.execute_s)
