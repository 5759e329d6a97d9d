"""The FastAPI app: the routers of :mod:`.routes` over one :class:`.context.ServerContext`,
the batching worker's lifetime, and the outer guards (body size, Host header, headers).

Routes: ``GET /`` (the page) and ``/static/*``; ``GET /health``; under ``/v1`` (API key
checked when the server has one): ``GET /models``, ``GET /databases``, ``POST /sql``,
``POST /execute``, ``POST /chat/completions`` (OpenAI-compatible, streaming by server-sent
events or not).
"""

from __future__ import annotations

import json
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI
from starlette.concurrency import run_in_threadpool

from .batcher import Batcher
from .context import ServerContext, require_key
from .databases import DatabaseRegistry
from .errors import error_body, install_error_handlers
from .limits import BodySizeLimit, Limits
from .routes import openai, pages, sql


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
    batcher = Batcher(service, max_queue=limits.max_queue, max_batch=limits.max_batch,
                      window_s=limits.batch_window_s)
    ctx = ServerContext(service=service, databases=databases, limits=limits, batcher=batcher,
                        model_id=model_id or default_model_id(service), api_key=api_key,
                        created=int(time.time()))

    @asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(batcher.stop)

    app = FastAPI(title="mlx-text2sql", version=_version(), lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.server = ctx
    app.state.batcher = batcher
    app.state.limits = limits
    app.state.databases = databases
    app.state.model_id = ctx.model_id
    install_error_handlers(app)

    app.include_router(pages.page_router)
    pages.mount_static(app)
    app.include_router(pages.health_router)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])
    v1.include_router(sql.router)
    v1.include_router(openai.router)
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


def default_model_id(service) -> str:
    """The model's name without the server's folders: ``smollm2-135m``, ``my-model``, or with
    an adapter ``smollm2-135m+adapters``."""
    def short(spec: str) -> str:
        return Path(spec).name if ("/" in spec or "\\" in spec) and Path(spec).exists() else spec

    name = short(str(getattr(service, "model_name", None) or "mlx-text2sql"))
    adapter = getattr(service, "adapter_path", None)
    return f"{name}+{short(str(adapter))}" if adapter else name


def _version() -> str:
    from .. import __version__

    return __version__
