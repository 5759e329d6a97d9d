"""What one client may ask of the server, the API key check, and the body size guard."""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass

from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import error_body

API_KEY_ENV = "MLX_TEXT2SQL_API_KEY"


@dataclass(frozen=True)
class Limits:
    """Per-request limits (a request over one is refused with 413, 422 or 503).

    max_body_bytes:     request body size (413).
    max_question_chars: length of a question (422).
    max_sql_chars:      length of SQL sent to ``/v1/execute`` (422).
    max_messages_chars: total text of a chat completion's messages (422).
    max_tokens:         the most tokens one reply may ask for (422 above it).
    default_max_tokens: when a request does not say.
    max_rows:           the most result rows one request may ask for (422 above it).
    timeout_s:          wall time a request may wait and decode (503 ``timeout`` after it).
    execute_timeout_s:  time one query may run on a database (its result is a ``timeout`` error).
    max_queue:          requests waiting or decoding at once (503 ``overloaded`` with Retry-After).
    max_batch:          requests decoded together in one engine call.
    batch_window_s:     how long the worker waits for more requests before starting a batch:
                        long enough that clients arriving together (threads a busy client
                        starts at once) land in one batch, short beside a reply's decode.
    max_exec_guided:    the most samples execution-guided decoding may draw per request.
    """

    max_body_bytes: int = 64 * 1024
    max_question_chars: int = 2000
    max_sql_chars: int = 20000
    max_messages_chars: int = 60000
    max_tokens: int = 512
    default_max_tokens: int = 256
    max_rows: int = 1000
    timeout_s: float = 120.0
    execute_timeout_s: float = 10.0
    max_queue: int = 64
    max_batch: int = 32
    batch_window_s: float = 0.03
    max_exec_guided: int = 16

    def problems(self) -> list[str]:
        out = []
        for name in ("max_body_bytes", "max_question_chars", "max_sql_chars", "max_messages_chars",
                     "max_tokens", "default_max_tokens", "max_rows", "max_queue", "max_batch"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be at least 1")
        if self.default_max_tokens > self.max_tokens:
            out.append("the default max_tokens must not exceed the max_tokens limit")
        for name in ("timeout_s", "execute_timeout_s"):
            if getattr(self, name) <= 0:
                out.append(f"{name} must be above 0")
        if self.batch_window_s < 0:
            out.append("batch_window_s must be 0 or more")
        return out


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts connections from this machine."""
    if host.strip().lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def key_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison (``hmac.compare_digest``), so timing does not leak the key."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def request_key(headers) -> str | None:
    """The key a client sent: ``Authorization: Bearer KEY`` (what the openai client sends) or
    ``X-API-Key: KEY``."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    return key.strip() if key else None


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 before a handler
    parses it, whether its Content-Length says so or it is streamed in chunks."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        length = headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                return await self._refuse(send, 400, "invalid_request", "Content-Length is not a number")
            if too_big:
                return await self._refuse_size(send, int(length))
        seen = 0

        async def limited_receive():
            # Raised inside the route's body read: FastAPI passes HTTPException through, and
            # the app's handler answers it as JSON.
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise StarletteHTTPException(413, detail=self.message(seen, "over"))
            return message

        await self.app(scope, limited_receive, send)

    def message(self, size: int, how: str = "") -> str:
        size_text = f"{size} bytes" if how != "over" else f"over {self.max_bytes} bytes"
        return (f"the request body ({size_text}) is over this server's limit of "
                f"{self.max_bytes} bytes (serve --max-body-kb)")

    async def _refuse_size(self, send, size: int):
        await self._refuse(send, 413, "request_too_large", self.message(size))

    @staticmethod
    async def _refuse(send, status: int, type: str, message: str):
        import json

        body = json.dumps(error_body(type, message)).encode("utf-8")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
