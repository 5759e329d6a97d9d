"""A small pool of SQL worker processes with a hard deadline per request.

Each worker (:mod:`mlx_text2sql.sqlworker`) is a fresh interpreter started with
``subprocess`` (no fork of this process, so MLX/OpenBLAS threads here cannot deadlock it), and
keeps its connections open between queries. A caller takes a free worker (the most recently
used one first, so a single-threaded caller always reuses one worker and its connections),
sends one request and waits for the reply until its deadline; a worker that has not answered
by then is killed with SIGKILL and replaced on demand. The pool grows to ``max_workers`` as
concurrent callers need it; callers beyond that wait for a free worker (that wait is not part
of a query's deadline: a query's clock starts when it reaches a worker).

Workers never outlive this process: each holds the read end of a lifeline pipe whose only write
end is here, and exits when it closes; :func:`atexit` shuts the pool down, and a forked child
drops (without touching) the pool it inherited.
"""

from __future__ import annotations

import atexit
import os
import pickle
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .sqlworker import EXIT_OUT_OF_MEMORY, _HEADER, write_frame

STARTUP_TIMEOUT_S = 60.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
         "from mlx_text2sql.sqlworker import main; main(sys.argv[2:])")


class WorkerTimeout(Exception):
    """The worker did not answer before the deadline (it has been killed)."""


class WorkerDied(Exception):
    """The worker exited before answering; ``out_of_memory`` when it said so."""

    def __init__(self, message: str, out_of_memory: bool = False):
        super().__init__(message)
        self.out_of_memory = out_of_memory


class WorkerStartError(Exception):
    """A worker process could not be started."""


class _Worker:
    def __init__(self, lifeline: int, memory_limit: int, max_result_bytes: int) -> None:
        req_r, self.req = os.pipe()
        self.resp, resp_w = os.pipe()
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)       # OpenBLAS would start a thread pool in each worker
        env["MLX_TEXT2SQL_NO_BLAS"] = "1"  # and so would importing the package
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOT, _PACKAGE_ROOT, str(req_r), str(resp_w),
                 str(lifeline), str(memory_limit), str(max_result_bytes)],
                pass_fds=(req_r, resp_w, lifeline), env=env, cwd="/",
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        except OSError as e:
            self._close_fds()
            raise WorkerStartError(f"cannot start {sys.executable}: {e}") from None
        finally:
            os.close(req_r)
            os.close(resp_w)
        self.pid = self.proc.pid
        self.poller = select.poll()
        self.poller.register(self.resp, select.POLLIN)
        self.sql: str | None = None      # the query in flight, for fault-injection tests
        self.close_pending = False
        try:
            ready = self.receive(time.monotonic() + STARTUP_TIMEOUT_S)
        except (WorkerTimeout, WorkerDied) as e:
            self.kill()
            raise WorkerStartError(f"the SQL worker process did not start ({e}); its error, "
                                   "if any, is on stderr") from None
        if not (isinstance(ready, tuple) and ready and ready[0] == "ready"):
            self.kill()
            raise WorkerStartError(f"the SQL worker process sent {ready!r} instead of ready")
        self.sqlite_version = ready[2]

    def _close_fds(self) -> None:
        for name in ("req", "resp"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, -1)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, payload: bytes) -> None:
        write_frame(self.req, payload)

    def receive(self, deadline: float | None):
        """The next reply; raises WorkerTimeout after ``deadline`` (``time.monotonic()``),
        WorkerDied at end of file."""
        header = self._read_exact(_HEADER.size, deadline)
        body = self._read_exact(_HEADER.unpack(header)[0], deadline)
        return pickle.loads(body)

    def _read_exact(self, n: int, deadline: float | None) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            if deadline is not None:
                wait_ms = max(0, int((deadline - time.monotonic()) * 1000) + 1)
                if not self.poller.poll(wait_ms):
                    if time.monotonic() >= deadline:
                        raise WorkerTimeout("no answer before the deadline")
                    continue
            k = os.readv(self.resp, [view[got:]])
            if k == 0:
                raise self._death()
            got += k
        return buf

    def _death(self) -> WorkerDied:
        try:
            code = self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None and code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exit status {code}" if code is not None else "closed its pipe"
        return WorkerDied(f"the SQL worker process (pid {self.pid}) died before answering "
                          f"({how})", out_of_memory=code == EXIT_OUT_OF_MEMORY)

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        self._close_fds()
        # Reaped by the housekeeper, not by the caller (a process in uninterruptible I/O can
        # take a while to go).
        _housekeeper().put(self.proc.wait)


class Pool:
    """Workers, started lazily, shared by every thread of this process."""

    def __init__(self, max_workers: int, memory_limit: int, max_result_bytes: int) -> None:
        self.max_workers = max(1, max_workers)
        self.memory_limit = memory_limit
        self.max_result_bytes = max_result_bytes
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []    # most recently used last
        self._busy: set[_Worker] = set()
        self._starting = 0
        self._closed = False
        self._owner = os.getpid()
        self._lifeline_r, self._lifeline_w = os.pipe()

    # ----------------------------------------------------------------------- workers

    def _acquire(self) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise WorkerStartError("the SQL worker pool is shut down")
                while self._idle:
                    worker = self._idle.pop()
                    if worker.alive():
                        self._busy.add(worker)
                        return worker
                    worker.kill()  # died while idle (killed from outside): replace it
                if len(self._busy) + self._starting < self.max_workers:
                    self._starting += 1
                    break
                self._cond.wait()
        try:
            worker = _Worker(self._lifeline_r, self.memory_limit, self.max_result_bytes)
        except BaseException:
            with self._cond:
                self._starting -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._starting -= 1
            self._busy.add(worker)
        return worker

    def _release(self, worker: _Worker, healthy: bool) -> None:
        worker.sql = None
        if healthy and worker.close_pending:
            worker.close_pending = False
            try:
                worker.send(pickle.dumps(("close",)))
                worker.receive(time.monotonic() + 5.0)
            except (OSError, WorkerTimeout, WorkerDied):
                healthy = False
        if not healthy:
            worker.kill()
        with self._cond:
            self._busy.discard(worker)
            if healthy and not self._closed:
                self._idle.append(worker)
            elif healthy:
                worker.kill()
            replace = not healthy and not self._closed and not self._idle
            if replace:
                self._starting += 1
            self._cond.notify()
        if replace:
            # A killed worker is replaced now, so that the next query does not wait for a start.
            _housekeeper().put(self._start_spare)

    def _start_spare(self) -> None:
        worker = None
        try:
            worker = _Worker(self._lifeline_r, self.memory_limit, self.max_result_bytes)
        except WorkerStartError:
            pass  # the next query tries again and reports the error
        finally:
            with self._cond:
                self._starting -= 1
                if worker is not None and not self._closed:
                    self._idle.insert(0, worker)
                elif worker is not None:
                    worker.kill()
                self._cond.notify()

    def call(self, request: tuple, timeout_s: float | None, sql: str | None = None):
        """Send ``request`` to a free worker and return its reply. Raises WorkerTimeout when no
        reply came within ``timeout_s`` (the worker is killed), WorkerDied when it died."""
        payload = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        for attempt in range(3):
            worker = self._acquire()
            worker.sql = sql
            healthy = False
            try:
                try:
                    worker.send(payload)
                except OSError:
                    # It died before the request reached it (nothing ran): use another one.
                    if attempt == 2:
                        raise WorkerDied(f"the SQL worker process (pid {worker.pid}) cannot be "
                                         "reached") from None
                    continue
                deadline = None if timeout_s is None else time.monotonic() + timeout_s
                reply = worker.receive(deadline)
                healthy = True
                return reply
            finally:
                self._release(worker, healthy)
        raise AssertionError("unreachable")  # pragma: no cover

    def broadcast(self, request: tuple) -> list:
        """Send ``request`` to every idle worker (busy ones get a close after their query when
        it is ``("close",)``) and return their replies."""
        with self._cond:
            idle, self._idle = self._idle, []
            self._busy.update(idle)
            if request[0] == "close":
                for worker in self._busy.difference(idle):
                    worker.close_pending = True
        replies = []
        for worker in idle:
            healthy = False
            try:
                worker.send(pickle.dumps(request))
                replies.append(worker.receive(time.monotonic() + 5.0))
                healthy = True
            except (OSError, WorkerTimeout, WorkerDied):
                pass
            finally:
                self._release(worker, healthy)
        return replies

    def workers(self) -> list[dict]:
        """``{"pid", "busy", "sql"}`` of every worker (for tests and diagnostics)."""
        with self._cond:
            return ([{"pid": w.pid, "busy": True, "sql": w.sql} for w in self._busy]
                    + [{"pid": w.pid, "busy": False, "sql": None} for w in self._idle])

    def shutdown(self) -> None:
        """Kill every worker and close the lifeline; the pool cannot be used afterwards."""
        if os.getpid() != self._owner:
            return
        with self._cond:
            self._closed = True
            workers, self._idle = self._idle + list(self._busy), []
            self._cond.notify_all()
        # Idle workers exit on their own once their request pipe closes (and are reaped here,
        # so their CPU time is accounted to this process); busy or stuck ones are killed.
        for worker in workers:
            if worker.req >= 0:
                os.close(worker.req)
                worker.req = -1
        deadline = time.monotonic() + 1.0
        for worker in workers:
            try:
                worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            if worker.proc.returncode is None:
                worker.kill()
            else:
                worker._close_fds()
        for fd in (self._lifeline_r, self._lifeline_w):
            try:
                os.close(fd)
            except OSError:
                pass


_pool: Pool | None = None
_pool_lock = threading.Lock()
_chores: queue.SimpleQueue | None = None


def _housekeeper() -> queue.SimpleQueue:
    """A queue of chores (reaping killed workers, starting spares) that one daemon thread
    works through, so that a caller never waits for them (starting a thread can take a while
    on a busy machine)."""
    global _chores
    with _pool_lock:
        if _chores is None:
            _chores = queue.SimpleQueue()
            threading.Thread(target=_do_chores, args=(_chores,), name="sqlpool-housekeeper",
                             daemon=True).start()
        return _chores


def _do_chores(chores: queue.SimpleQueue) -> None:
    while True:
        chore = chores.get()
        try:
            chore()
        except Exception:  # a chore's failure must not stop the others
            pass


def get_pool(max_workers: int, memory_limit: int, max_result_bytes: int) -> Pool:
    """The process's pool, created on first use (no worker starts before the first query)."""
    global _pool
    pool = _pool
    if pool is not None and pool._owner == os.getpid() and not pool._closed:
        return pool
    with _pool_lock:
        if _pool is None or _pool._owner != os.getpid() or _pool._closed:
            _pool = Pool(max_workers, memory_limit, max_result_bytes)
        return _pool


def current_pool() -> Pool | None:
    pool = _pool
    return pool if pool is not None and pool._owner == os.getpid() else None


def shutdown() -> None:
    """Stop this process's workers (they restart on the next query)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown()


def _forget_after_fork() -> None:
    # The child does not own the parent's workers; it starts its own on first use. (Its
    # copies of the pipes are closed so that the parent's workers still see the lifeline
    # close when the parent goes.)
    global _pool, _pool_lock, _chores
    pool, _pool = _pool, None
    _pool_lock = threading.Lock()
    _chores = None  # the housekeeper thread does not exist in the child
    if pool is not None:
        fds = [pool._lifeline_r, pool._lifeline_w]
        for w in pool._idle + list(pool._busy):
            fds += [w.req, w.resp]
        for fd in fds:
            try:
                if fd >= 0:
                    os.close(fd)
            except OSError:
                pass


atexit.register(shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
