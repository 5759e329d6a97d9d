"""One worker thread owns the model: it collects the requests that arrive within a few
milliseconds (and all those that queued while the previous batch decoded), and answers them
with one ``ask_many`` / ``complete`` call, so concurrent requests are decoded together by the
batched engine instead of one after another.

Each request is a :class:`Job` holding its own future; the engine returns results in input
order and each result goes back to the job at that position, so answers cannot cross between
requests. Jobs are batched only with jobs of the same kind and the same decoding options (one
call takes one set of options). A batch that raises is retried one job at a time, so one bad
input fails only its own request.

The queue is bounded (``Limits.max_queue`` jobs waiting or decoding): :meth:`Batcher.submit`
raises :class:`Overloaded` beyond it. A job whose client went away (:meth:`Batcher.cancel`)
frees its place at once: a waiting job is taken out of the queue; a job already decoding gives
up its place in the count, and where the service takes ``cancelled`` (``api.Text2SQL`` does)
its row stops decoding at the next token and frees its place in the batch; its result is
dropped.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("mlx_text2sql.server")


class Overloaded(Exception):
    """The queue is full; ``retry_after`` is a guess of the seconds until a place frees."""

    def __init__(self, queued: int, retry_after: int):
        super().__init__(f"{queued} requests are already waiting or decoding (serve --max-queue)")
        self.queued = queued
        self.retry_after = retry_after


@dataclass(eq=False)
class Job:
    """One request's work. ``kind`` "ask" (``item``: an ``api.Question``, ``options``: its
    ``AskOptions``) or "complete" (``item``: chat messages, ``options``: a dict of
    ``complete`` keywords). ``on_piece(text)`` receives streamed reply text on the worker
    thread."""

    kind: str
    item: Any
    options: Any
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    on_piece: Callable[[str], None] | None = None
    enqueued: float = field(default_factory=time.perf_counter)
    started: float | None = None
    finished: float | None = None
    cancelled: bool = False
    counted: bool = True  # holds a place in the queue count

    @property
    def group(self) -> tuple:
        opts = self.options
        if isinstance(opts, dict):
            opts = tuple(sorted(opts.items()))
        return (self.kind, opts)

    @property
    def queue_s(self) -> float:
        return (self.started or time.perf_counter()) - self.enqueued


@dataclass
class BatchStats:
    batches: int = 0
    jobs: int = 0
    largest: int = 0
    submitted: int = 0
    cancelled: int = 0  # jobs whose client left or ran out of time
    dropped: int = 0  # results of cancelled jobs thrown away (they were decoding)
    seconds: float = 0.0
    sizes: list[int] = field(default_factory=list)  # the last 1000 batch sizes


class Batcher:
    """The model's only caller. ``service`` is an ``api.Text2SQL``."""

    def __init__(self, service, *, max_queue: int = 64, max_batch: int = 32, window_s: float = 0.005):
        self.service = service
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.window_s = window_s
        self.stats = BatchStats()
        self._pending: deque[Job] = deque()
        self._inflight = 0
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._batch_s = 1.0  # moving average of a batch's wall time, for Retry-After
        self._batch_kw = {name: _takes(getattr(service, name), "batch_size") for name in ("ask_many", "complete")}
        self._cancel_kw = {name: _takes(getattr(service, name), "cancelled") for name in ("ask_many", "complete")}

    # ----------------------------------------------------------------- life cycle

    def start(self) -> None:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="mlx-text2sql-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stop = True
            for job in self._pending:
                self._settle(job, error=RuntimeError("the server is shutting down"))
            self._pending.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # ----------------------------------------------------------------- clients' side

    @property
    def queued(self) -> int:
        """Jobs waiting or decoding (those whose client left not counted)."""
        return self._inflight

    def retry_after(self) -> int:
        batches_ahead = 1 + self._inflight / max(1, self.max_batch)
        return max(1, math.ceil(self._batch_s * batches_ahead))

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stop:
                raise Overloaded(self._inflight, 5)
            if self._inflight >= self.max_queue:
                raise Overloaded(self._inflight, self.retry_after())
            self._inflight += 1
            self.stats.submitted += 1
            self._pending.append(job)
            self._cond.notify_all()

    def cancel(self, job: Job) -> None:
        """The client is gone (disconnect or time limit): free its place now."""
        with self._cond:
            if job.cancelled or job.finished is not None:
                return
            job.cancelled = True
            self.stats.cancelled += 1
            try:
                self._pending.remove(job)
            except ValueError:
                pass  # already decoding: the batch finishes, this result is dropped
            self._release(job)

    def _release(self, job: Job) -> None:
        if job.counted:
            job.counted = False
            self._inflight -= 1

    # ----------------------------------------------------------------- worker

    def _take_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._pending and not self._stop:
                self._cond.wait()
            if self._stop:
                return None
            # Wait a few milliseconds from the oldest arrival for others to join (the oldest
            # may leave meanwhile: the window is always the current oldest one's).
            while self._pending and len(self._pending) < self.max_batch and not self._stop:
                left = self._pending[0].enqueued + self.window_s - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._stop or not self._pending:
                return None if self._stop else []
            group = self._pending[0].group
            batch = [j for j in self._pending if j.group == group][: self.max_batch]
            for j in batch:
                self._pending.remove(j)
            now = time.perf_counter()
            for j in batch:
                j.started = now
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if not batch:
                continue
            s = self.stats  # counted before the answers go out, so a client sees its batch
            s.batches += 1
            s.jobs += len(batch)
            s.largest = max(s.largest, len(batch))
            s.sizes = (s.sizes + [len(batch)])[-1000:]
            t = time.perf_counter()
            try:
                self._answer(batch)
            except BaseException as e:  # never let the worker die: fail this batch's requests
                log.exception("batch of %d failed", len(batch))
                for job in batch:
                    self._settle(job, error=e)
            seconds = time.perf_counter() - t
            self._batch_s = 0.7 * self._batch_s + 0.3 * seconds
            s.seconds += seconds

    def _answer(self, batch: list[Job]) -> None:
        try:
            results = self._call(batch)
        except Exception as e:
            if len(batch) == 1:
                self._settle(batch[0], error=e)
                return
            # One bad input must not fail its neighbours: answer each alone.
            log.info("batch of %d raised %s: answering one by one", len(batch), type(e).__name__)
            for job in batch:
                try:
                    [result] = self._call([job])
                except Exception as e1:
                    self._settle(job, error=e1)
                else:
                    self._settle(job, result=result)
            return
        if len(results) != len(batch):
            raise RuntimeError(f"the engine returned {len(results)} results for {len(batch)} inputs")
        for job, result in zip(batch, results):
            self._settle(job, result=result)

    def _call(self, batch: list[Job]) -> list:
        kind = batch[0].kind

        def gone(i: int) -> bool:
            return batch[i].cancelled

        if kind == "ask":
            kw = {"batch_size": len(batch)} if self._batch_kw["ask_many"] else {}
            if self._cancel_kw["ask_many"]:
                kw["cancelled"] = gone
            return self.service.ask_many([j.item for j in batch], options=batch[0].options, **kw)
        if kind == "complete":
            kw = dict(batch[0].options)
            if self._batch_kw["complete"]:
                kw["batch_size"] = len(batch)
            if self._cancel_kw["complete"]:
                kw["cancelled"] = gone
            if any(j.on_piece is not None for j in batch):
                def stream(i: int, piece: str) -> None:
                    job = batch[i]
                    if job.on_piece is not None and not job.cancelled:
                        job.on_piece(piece)

                kw["stream_callback"] = stream
            return self.service.complete([j.item for j in batch], **kw)
        raise ValueError(f"unknown job kind {kind!r}")

    def _settle(self, job: Job, result: Any = None, error: BaseException | None = None) -> None:
        with self._cond:
            job.finished = time.perf_counter()
            if job.cancelled:
                self.stats.dropped += 1
                return
            self._release(job)

        def resolve() -> None:
            if job.future.done():
                return
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)

        try:
            job.loop.call_soon_threadsafe(resolve)
        except RuntimeError:
            pass  # the event loop is closed: the server is gone


def _takes(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params
