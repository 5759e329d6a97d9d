"""The web page, its static files, and ``GET /health``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from .. import schemas as S
from ..context import ServerContext, server

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

page_router = APIRouter()
health_router = APIRouter()


@page_router.get("/", include_in_schema=False)
async def page():
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=PAGE_HEADERS)


def mount_static(app: FastAPI) -> None:
    """Serve ``static/`` (the page's script and style) under ``/static``."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")


@health_router.get("/health", response_model=S.Health)
async def health(ctx: ServerContext = Depends(server)):
    store = getattr(getattr(ctx.service, "generator", None), "store", None)
    cache = None if store is None else {"entries": len(store.entries), "bytes": store.nbytes,
                                        "max_bytes": store.max_bytes}
    return S.Health(model=ctx.model_id, databases=len(ctx.databases), auth=ctx.api_key is not None,
                    queued=ctx.batcher.queued, batches=ctx.batcher.stats.batches, prefix_cache=cache)
