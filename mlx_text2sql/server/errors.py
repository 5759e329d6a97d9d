"""Every error the server answers is JSON, ``{"error": {"type": ..., "message": ...}}`` (the
OpenAI shape, so its client raises the right exception class), with the HTTP status that fits:

=====  ==========================  =====================================================
 400   ``invalid_request``         malformed JSON, a bad input the library rejects
 401   ``unauthorized``            missing or wrong API key
 404   ``not_found``               unknown route, database or model
 405   ``method_not_allowed``      e.g. GET on a POST route
 413   ``request_too_large``       body over ``--max-body-kb``
 422   ``validation_error``        a field of the wrong type or out of its limits
 503   ``overloaded``/``timeout``  queue full or request over its time limit (Retry-After)
 500   ``internal_error``          a bug: logged with its traceback, the message says so
=====  ==========================  =====================================================
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("mlx_text2sql.server")

_STATUS_TYPES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 413: "request_too_large", 422: "validation_error",
                 503: "overloaded"}


class ApiError(Exception):
    """An error answered as JSON with ``status``; ``headers`` (e.g. Retry-After) are sent too."""

    def __init__(self, status: int, message: str, type: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _STATUS_TYPES.get(status, "error")
        self.headers = headers or {}


def error_body(type: str, message: str) -> dict:
    return {"error": {"type": type, "message": message}}


def error_response(status: int, type: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(type, message), status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    problems = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            return 400, "invalid_request", f"the body is not valid JSON ({ctx.get('error', 'parse error')})"
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        problems.append(f"{loc}: {err.get('msg', 'invalid')}")
    return 422, "validation_error", "; ".join(problems) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        return error_response(exc.status, exc.type, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError):
        status, type, message = _validation_message(exc)
        return error_response(status, type, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see GET /v1/models, /v1/databases, /health"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, _STATUS_TYPES.get(exc.status_code, "error"), message,
                              getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error",
                              f"the server failed on this request ({type(exc).__name__}); the server log has the details")
