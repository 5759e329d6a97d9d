"""The FastAPI app: routes, auth, limits, and the bridge from async handlers to the batching
worker (:mod:`.batcher`).

Routes: ``GET /`` (the page) and ``/static/*``; ``GET /health``; under ``/v1`` (API key
checked when the server has one): ``GET /models``, ``GET /databases``, ``POST /sql``,
``POST /execute``, ``POST /chat/completions`` (OpenAI-compatible, streaming by server-sent
events or not).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ..errors import Text2SQLError
from . import schemas as S
from .batcher import Batcher, Job, Overloaded
from .databases import DatabaseRegistry
from .errors import ApiError, error_body, install_error_handlers
from .limits import BodySizeLimit, Limits, key_matches, request_key

STATIC = Path(str(resources.files("mlx_text2sql.server") / "static"))

# The page loads nothing from elsewhere and runs no inline script: what a database or a model
# returns can only ever be text in it.
PAGE_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
DISCONNECT_POLL_S = 0.2
DEFAULT_ROWS = 100


def create_app(service, databases: DatabaseRegistry, *, limits: Limits | None = None,
               api_key: str | None = None, model_id: str | None = None,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """An app answering over ``service`` (an ``api.Text2SQL``) and ``databases``.

    api_key: required on every ``/v1`` route when set (``Authorization: Bearer KEY`` or
        ``X-API-Key``), compared in constant time.
    model_id: the id ``/v1/models`` lists and chat completions must name (default: the
        service's model name).
    allowed_hosts: Host header values accepted (None: any). A loopback server passes its
        loopback names, so a web page elsewhere cannot reach it through DNS rebinding.
    """
    limits = limits or Limits()
    problems = limits.problems()
    if problems:
        from ..errors import ConfigError

        raise ConfigError(problems)
    model_id = model_id or default_model_id(service)
    batcher = Batcher(service, max_queue=limits.max_queue, max_batch=limits.max_batch,
                      window_s=limits.batch_window_s)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(batcher.stop)

    app = FastAPI(title="mlx-text2sql", version=_version(), lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.batcher = batcher
    app.state.limits = limits
    app.state.databases = databases
    app.state.model_id = model_id
    install_error_handlers(app)

    async def check_key(request: Request) -> None:
        if api_key is None:
            return
        if not key_matches(request_key(request.headers), api_key):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY' "
                                "(the key the server was started with)", "unauthorized",
                           {"WWW-Authenticate": "Bearer"})

    def database(name: str):
        db = databases.get(name)
        if db is None:
            raise ApiError(404, f"no database {name!r} on this server; it has: {', '.join(databases.names)} "
                                "(GET /v1/databases)")
        return db

    def at_most(value: int | float | None, limit: int | float, what: str) -> None:
        if value is not None and value > limit:
            raise ApiError(422, f"{what} is {value}, over this server's limit of {limit}", "validation_error")

    async def run_job(request: Request, kind: str, item, options, on_piece=None):
        """Queue one job and wait for its result, within the time limit and while the client
        is connected."""
        job = submit(kind, item, options, on_piece)
        watcher = asyncio.create_task(_watch_disconnect(request, job, batcher))
        try:
            return await wait_result(job, limits.timeout_s), job
        finally:
            watcher.cancel()

    def submit(kind: str, item, options, on_piece=None) -> Job:
        loop = asyncio.get_running_loop()
        job = Job(kind, item, options, loop, loop.create_future(), on_piece)
        try:
            batcher.submit(job)
        except Overloaded as e:
            raise ApiError(503, f"the server is busy: {e}; retry in {e.retry_after} s", "overloaded",
                           {"Retry-After": str(e.retry_after)}) from None
        return job

    async def wait_result(job: Job, timeout: float):
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except asyncio.TimeoutError:
            batcher.cancel(job)
            raise ApiError(503, f"the request took longer than this server's limit of {limits.timeout_s:g} s "
                                "(serve --request-timeout); ask again later or with a smaller max_tokens",
                           "timeout", {"Retry-After": str(batcher.retry_after())}) from None
        except asyncio.CancelledError:
            batcher.cancel(job)
            raise
        except (Text2SQLError, ValueError) as e:
            raise ApiError(400, _hide_paths(str(e), databases), "invalid_request") from None

    # ----------------------------------------------------------------- page, health

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health", response_model=S.Health)
    async def health():
        store = getattr(getattr(service, "generator", None), "store", None)
        cache = None if store is None else {"entries": len(store.entries), "bytes": store.nbytes,
                                            "max_bytes": store.max_bytes}
        return S.Health(model=model_id, databases=len(databases), auth=api_key is not None,
                        queued=batcher.queued, batches=batcher.stats.batches, prefix_cache=cache)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])

    # ----------------------------------------------------------------- databases, SQL

    @v1.get("/databases", response_model=S.DatabaseList)
    async def list_databases():
        data = [await run_in_threadpool(databases.summary, name) for name in databases.names]
        return S.DatabaseList(data=data)

    @v1.get("/databases/{name}", response_model=S.DatabaseInfo)
    async def one_database(name: str):
        return await run_in_threadpool(databases.summary, database(name).name)

    @v1.post("/sql", response_model=S.SQLResponse)
    async def sql(req: S.SQLRequest, request: Request):
        from ..api import AskOptions, Question

        db = database(req.database)
        at_most(len(req.question), limits.max_question_chars, "the question's length")
        at_most(req.max_rows, limits.max_rows, "max_rows")
        at_most(req.max_tokens, limits.max_tokens, "max_tokens")
        at_most(req.exec_guided, limits.max_exec_guided, "exec_guided")
        options = AskOptions(execute=req.execute, max_rows=req.max_rows or min(DEFAULT_ROWS, limits.max_rows), timeout_s=limits.execute_timeout_s,
                             max_tokens=req.max_tokens or limits.default_max_tokens, temp=req.temperature,
                             top_p=req.top_p, seed=req.seed, fix_values=req.fix_values,
                             exec_guided=req.exec_guided, value_hints=req.value_hints,
                             select_schema=req.select_schema, sample_rows=req.sample_rows,
                             batch_size=limits.max_batch)
        item = Question(question=req.question, db=str(db.path), tables=req.tables)
        t0 = time.perf_counter()
        answer, job = await run_job(request, "ask", item, options)
        t = answer.timings
        queue_s = job.queue_s
        return S.SQLResponse(
            database=db.name, question=req.question, sql=answer.sql, reply=answer.reply,
            sql_greedy=answer.sql_greedy, columns=answer.columns, rows=answer.rows,
            truncated=bool(answer.truncated), error_kind=answer.error_kind,
            error=_hide_paths(answer.error, databases) if answer.error else None,
            timings=S.Timings(queue_s=queue_s, prompt_s=t.prompt_s, decode_s=t.decode_s,
                              execute_s=t.execute_s, total_s=time.perf_counter() - t0),
            model=model_id)

    @v1.post("/execute", response_model=S.ExecuteResponse)
    async def execute(req: S.ExecuteRequest):
        from ..api import execute_sql

        db = database(req.database)
        at_most(len(req.sql), limits.max_sql_chars, "the SQL's length")
        at_most(req.max_rows, limits.max_rows, "max_rows")
        r = await run_in_threadpool(execute_sql, db.path, req.sql,
                                    max_rows=req.max_rows or min(DEFAULT_ROWS, limits.max_rows),
                                    timeout_s=limits.execute_timeout_s)
        return S.ExecuteResponse(database=db.name, sql=req.sql, columns=r.columns, rows=r.rows,
                                 truncated=bool(r.truncated), error_kind=r.error_kind,
                                 error=_hide_paths(r.error, databases) if r.error else None,
                                 execute_s=r.execute_s)

    # ----------------------------------------------------------------- OpenAI-compatible

    @v1.get("/models", response_model=S.ModelList)
    async def models():
        return S.ModelList(data=[S.ModelCard(id=model_id, created=created)])

    @v1.post("/chat/completions")
    async def chat_completions(req: S.ChatCompletionRequest, request: Request):
        if req.model != model_id:
            raise ApiError(404, f"no model {req.model!r} on this server; it serves {model_id!r} (GET /v1/models)",
                           "model_not_found")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]
        at_most(sum(len(m["content"]) for m in messages), limits.max_messages_chars,
                "the messages' total length")
        max_tokens = req.max_completion_tokens or req.max_tokens or limits.default_max_tokens
        at_most(max_tokens, limits.max_tokens, "max_tokens")
        options = {"max_tokens": max_tokens, "temp": req.temperature or 0.0,
                   "top_p": 1.0 if req.top_p is None else req.top_p, "seed": req.seed}
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        now = int(time.time())
        if not req.stream:
            completion, _job = await run_job(request, "complete", messages, options)
            return _chat_response(cid, now, model_id, completion)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await _stream(cid, now, model_id, messages, options, include_usage)

    async def _stream(cid, now, model, messages, options, include_usage):
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        done = object()

        def on_piece(text: str) -> None:  # on the worker thread
            loop.call_soon_threadsafe(pieces.put_nowait, text)

        job = submit("complete", messages, options, on_piece)  # a full queue is a 503 before the stream
        # Pieces are queued on the loop before the future resolves, so `done` comes last.
        job.future.add_done_callback(lambda _f: pieces.put_nowait(done))

        def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
            body = {"id": cid, "object": "chat.completion.chunk", "created": now, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else [],
                    }
            if usage is not None:
                body["usage"] = usage
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        async def events():
            deadline = time.monotonic() + limits.timeout_s
            try:
                yield chunk({"role": "assistant", "content": ""})
                while True:
                    left = deadline - time.monotonic()
                    try:
                        item = await asyncio.wait_for(pieces.get(), max(0.0, left))
                    except asyncio.TimeoutError:
                        batcher.cancel(job)
                        err = error_body("timeout", f"the request took longer than this server's limit of "
                                                    f"{limits.timeout_s:g} s (serve --request-timeout)")
                        yield f"data: {json.dumps(err)}\n\n"
                        return
                    if item is done:
                        break
                    yield chunk({"content": item})
                try:
                    completion = job.future.result()
                except Exception as e:
                    kind = "invalid_request" if isinstance(e, (Text2SQLError, ValueError)) else "internal_error"
                    yield f"data: {json.dumps(error_body(kind, _hide_paths(str(e), databases)))}\n\n"
                    return
                yield chunk({}, _finish_reason(completion))
                if include_usage:
                    yield chunk({}, usage=_usage(completion))
                yield "data: [DONE]\n\n"
            finally:
                batcher.cancel(job)  # a client that left mid-stream frees its place

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    app.include_router(v1)
    outer = BodySizeLimit(app, limits.max_body_bytes)
    return _Guard(outer, app, allowed_hosts)


class _Guard:
    """ASGI wrapper: Host header check (DNS rebinding), security headers on every response.
    Attribute access falls through to the FastAPI app (``.state``, ``.routes``...)."""

    def __init__(self, inner, app: FastAPI, allowed_hosts: list[str] | None):
        self._inner = inner
        self._app = app
        self._hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    def __getattr__(self, name):
        return getattr(self._app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self._inner(scope, receive, send)
        if self._hosts is not None:
            host = ""
            for k, v in scope.get("headers", []):
                if k == b"host":
                    host = v.decode("latin-1").lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in self._hosts:
                body = json.dumps(error_body("invalid_request", f"Host {host!r} is not served here; "
                                             "connect to the address the server listens on")).encode()
                await send({"type": "http.response.start", "status": 400,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return

        async def with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                have = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in _HEADER_BYTES.items() if k not in have]
                message = {**message, "headers": headers}
            await send(message)

        await self._inner(scope, receive, with_headers)


_HEADER_BYTES = {b"x-content-type-options": b"nosniff", b"referrer-policy": b"no-referrer"}


async def _watch_disconnect(request: Request, job: Job, batcher: Batcher) -> None:
    """Cancel ``job`` when its client disconnects before the answer is ready."""
    try:
        while not job.future.done():
            if await request.is_disconnected():
                batcher.cancel(job)
                if not job.future.done():
                    job.future.cancel()
                return
            await asyncio.sleep(DISCONNECT_POLL_S)
    except asyncio.CancelledError:
        pass


def default_model_id(service) -> str:
    """The model's name without the server's folders: ``smollm2-135m``, ``my-model``, or with
    an adapter ``smollm2-135m+adapters``."""
    def short(spec: str) -> str:
        return Path(spec).name if ("/" in spec or "\\" in spec) and Path(spec).exists() else spec

    name = short(str(getattr(service, "model_name", None) or "mlx-text2sql"))
    adapter = getattr(service, "adapter_path", None)
    return f"{name}+{short(str(adapter))}" if adapter else name


def _finish_reason(completion) -> str:
    reason = getattr(completion, "finish_reason", None) or "stop"
    return reason if reason in ("stop", "length") else "stop"


def _usage(completion) -> dict:
    prompt = int(getattr(completion, "n_prompt_tokens", 0) or 0)
    tokens = int(getattr(completion, "n_tokens", 0) or 0)
    return {"prompt_tokens": prompt, "completion_tokens": tokens, "total_tokens": prompt + tokens}


def _chat_response(cid: str, created: int, model: str, completion) -> dict:
    return {
        "id": cid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text},
                     "finish_reason": _finish_reason(completion), "logprobs": None}],
        "usage": _usage(completion),
    }


def _hide_paths(text: str | None, databases: DatabaseRegistry) -> str | None:
    """Messages name a database by its name, not by the server's path to it."""
    if not text:
        return text
    for db in databases:
        text = text.replace(str(db.path), db.name)
    return text


def _version() -> str:
    from .. import __version__

    return __version__
