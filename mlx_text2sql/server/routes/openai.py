"""The OpenAI-compatible routes: ``GET /v1/models`` and ``POST /v1/chat/completions``, whole
or streamed as server-sent events (``stream: true``), so the openai client and the tools built
on it can talk to the server."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from ...errors import Text2SQLError
from .. import schemas as S
from ..batcher import Job
from ..context import ServerContext, at_most, server
from ..errors import ApiError, error_body

router = APIRouter()


@dataclass(frozen=True)
class Chat:
    """A chat completion request within this server's limits, as the worker takes it."""

    req: S.ChatCompletionRequest
    messages: list[dict]
    options: dict


async def checked_chat(req: S.ChatCompletionRequest, ctx: ServerContext = Depends(server)) -> Chat:
    """The request must name this server's model (404) and stay within its limits (422)."""
    if req.model != ctx.model_id:
        raise ApiError(404, f"no model {req.model!r} on this server; it serves {ctx.model_id!r} (GET /v1/models)",
                       "model_not_found")
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in req.messages]
    limits = ctx.limits
    at_most(sum(len(m["content"]) for m in messages), limits.max_messages_chars, "the messages' total length")
    max_tokens = req.max_completion_tokens or req.max_tokens or limits.default_max_tokens
    at_most(max_tokens, limits.max_tokens, "max_tokens")
    options = {"max_tokens": max_tokens, "temp": req.temperature or 0.0,
               "top_p": 1.0 if req.top_p is None else req.top_p, "seed": req.seed}
    return Chat(req, messages, options)


@router.get("/models", response_model=S.ModelList)
async def models(ctx: ServerContext = Depends(server)):
    return S.ModelList(data=[S.ModelCard(id=ctx.model_id, created=ctx.created)])


@router.post("/chat/completions")
async def chat_completions(request: Request, chat: Chat = Depends(checked_chat),
                           ctx: ServerContext = Depends(server)):
    cid = f"chatcmpl-{uuid.uuid4().hex}"
    now = int(time.time())
    if not chat.req.stream:
        completion, _job = await ctx.run_job(request, "complete", chat.messages, chat.options)
        return _chat_response(cid, now, ctx.model_id, completion)
    include_usage = bool(chat.req.stream_options and chat.req.stream_options.include_usage)
    return _stream(ctx, _Chunks(cid, now, ctx.model_id), chat, include_usage)


@dataclass(frozen=True)
class _Chunks:
    """Writes the ``chat.completion.chunk`` events of one streamed completion."""

    cid: str
    created: int
    model: str

    def __call__(self, delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
        body = {"id": self.cid, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else []}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _stream(ctx: ServerContext, chunk: _Chunks, chat: Chat, include_usage: bool) -> StreamingResponse:
    """Queue the completion (a full queue is a 503 before the stream starts) and stream its
    pieces as the worker thread decodes them."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()
    done = object()

    def on_piece(text: str) -> None:  # on the worker thread
        loop.call_soon_threadsafe(pieces.put_nowait, text)

    job = ctx.submit("complete", chat.messages, chat.options, on_piece)
    # Pieces are queued on the loop before the future resolves, so `done` comes last.
    job.future.add_done_callback(lambda _f: pieces.put_nowait(done))
    return StreamingResponse(_events(ctx, job, pieces, done, chunk, include_usage), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _events(ctx: ServerContext, job: Job, pieces: asyncio.Queue, done: object, chunk: _Chunks,
                  include_usage: bool):
    """The events: the role, each piece, then the finish reason (and usage) and ``[DONE]``; or
    an error event when the time limit passes or the completion fails."""
    deadline = time.monotonic() + ctx.limits.timeout_s
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            left = deadline - time.monotonic()
            try:
                item = await asyncio.wait_for(pieces.get(), max(0.0, left))
            except asyncio.TimeoutError:
                ctx.batcher.cancel(job)
                err = error_body("timeout", f"the request took longer than this server's limit of "
                                            f"{ctx.limits.timeout_s:g} s (serve --request-timeout)")
                yield f"data: {json.dumps(err)}\n\n"
                return
            if item is done:
                break
            yield chunk({"content": item})
        try:
            completion = job.future.result()
        except Exception as e:
            kind = "invalid_request" if isinstance(e, (Text2SQLError, ValueError)) else "internal_error"
            yield f"data: {json.dumps(error_body(kind, ctx.hide_paths(str(e))))}\n\n"
            return
        yield chunk({}, _finish_reason(completion))
        if include_usage:
            yield chunk({}, usage=_usage(completion))
        yield "data: [DONE]\n\n"
    finally:
        ctx.batcher.cancel(job)  # a client that left mid-stream frees its place


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
