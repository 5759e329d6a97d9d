"""What every route handler shares: the :class:`ServerContext` (service, databases, limits, the
batching worker) as a FastAPI dependency, the API key check, the limit check, and the bridge
from an async handler to the worker thread (queue a job, wait within the time limit, give up
when the client leaves)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import Depends, Request

from ..errors import Text2SQLError
from .batcher import Batcher, Job, Overloaded
from .databases import Database, DatabaseRegistry
from .errors import ApiError
from .limits import Limits, key_matches, request_key

DISCONNECT_POLL_S = 0.2


@dataclass
class ServerContext:
    """One app's state; ``create_app`` stores it as ``app.state.server``.

    service: the ``api.Text2SQL`` answering; model_id: the id clients name it by; api_key:
    required on ``/v1`` when set; created: the model card's timestamp (the app's start).
    """

    service: object
    databases: DatabaseRegistry
    limits: Limits
    batcher: Batcher
    model_id: str
    api_key: str | None
    created: int

    def database(self, name: str) -> Database:
        """The database a request names, or a 404 that lists the ones this server has."""
        db = self.databases.get(name)
        if db is None:
            raise ApiError(404, f"no database {name!r} on this server; it has: {', '.join(self.databases.names)} "
                                "(GET /v1/databases)")
        return db

    def hide_paths(self, text: str | None) -> str | None:
        """Messages name a database by its name, not by the server's path to it."""
        return hide_paths(text, self.databases)

    def submit(self, kind: str, item, options, on_piece=None) -> Job:
        """Queue one job for the worker; a full queue is a 503 ``overloaded`` with Retry-After."""
        loop = asyncio.get_running_loop()
        job = Job(kind, item, options, loop, loop.create_future(), on_piece)
        try:
            self.batcher.submit(job)
        except Overloaded as e:
            raise ApiError(503, f"the server is busy: {e}; retry in {e.retry_after} s", "overloaded",
                           {"Retry-After": str(e.retry_after)}) from None
        return job

    async def wait_result(self, job: Job):
        """The job's result within ``limits.timeout_s`` (503 ``timeout`` after it); an input
        the library rejects is a 400."""
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), self.limits.timeout_s)
        except asyncio.TimeoutError:
            self.batcher.cancel(job)
            raise ApiError(503, f"the request took longer than this server's limit of {self.limits.timeout_s:g} s "
                                "(serve --request-timeout); ask again later or with a smaller max_tokens",
                           "timeout", {"Retry-After": str(self.batcher.retry_after())}) from None
        except asyncio.CancelledError:
            self.batcher.cancel(job)
            raise
        except (Text2SQLError, ValueError) as e:
            raise ApiError(400, self.hide_paths(str(e)), "invalid_request") from None

    async def run_job(self, request: Request, kind: str, item, options, on_piece=None):
        """Queue one job and wait for its result, within the time limit and while the client
        is connected; returns (result, job)."""
        job = self.submit(kind, item, options, on_piece)
        watcher = asyncio.create_task(_watch_disconnect(request, job, self.batcher))
        try:
            return await self.wait_result(job), job
        finally:
            watcher.cancel()


def server(request: Request) -> ServerContext:
    """Dependency: the context of the app serving ``request``."""
    return request.app.state.server


async def require_key(request: Request, ctx: ServerContext = Depends(server)) -> None:
    """Dependency of every ``/v1`` route: when the server has an API key, the request must
    carry it (``Authorization: Bearer KEY`` or ``X-API-Key``), compared in constant time."""
    if ctx.api_key is None:
        return
    if not key_matches(request_key(request.headers), ctx.api_key):
        raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY' "
                            "(the key the server was started with)", "unauthorized",
                       {"WWW-Authenticate": "Bearer"})


def at_most(value: int | float | None, limit: int | float, what: str) -> None:
    """A 422 ``validation_error`` when a request asks for more than a limit allows."""
    if value is not None and value > limit:
        raise ApiError(422, f"{what} is {value}, over this server's limit of {limit}", "validation_error")


def hide_paths(text: str | None, databases: DatabaseRegistry) -> str | None:
    """``text`` with each database's path on this server replaced by the database's name."""
    if not text:
        return text
    for db in databases:
        text = text.replace(str(db.path), db.name)
    return text


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
