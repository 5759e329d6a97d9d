"""The executor's worker process: runs queries sent by :mod:`mlx_text2sql.sqlpool`.

Started as ``python -I -c <boot> <package root> <fds...>`` (a fresh interpreter: nothing of the
parent's threads, MLX or BLAS state is inherited). It caps its own address space
(``RLIMIT_AS``), SQLite's heap and its core-dump size, ignores Ctrl-C (the parent handles it),
exits when the parent's lifeline pipe closes (the parent died or shut the pool down, even in
the middle of a query), then answers one request at a time. Messages are pickles framed by an
8-byte length. Imports: the standard library, apsw and :mod:`~mlx_text2sql.sqlengine`.
"""

from __future__ import annotations

import os
import pickle
import resource
import signal
import struct
import sys
import threading

_HEADER = struct.Struct("!Q")
EXIT_OUT_OF_MEMORY = 86  # the parent reports a worker that exits with it as kind "memory"


def read_message(fd: int):
    """One framed message from ``fd`` (blocking); None at end of file."""
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return None
    body = _read_exact(fd, _HEADER.unpack(header)[0])
    if body is None:
        return None
    return pickle.loads(body)


def _read_exact(fd: int, n: int) -> bytearray | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            return None
        got += k
    return buf


def write_frame(fd: int, payload: bytes) -> None:
    """Write ``payload`` with its length header (all of it, however the pipe splits it)."""
    data = memoryview(_HEADER.pack(len(payload)) + payload)
    while data:
        data = data[os.write(fd, data):]


def _watch_lifeline(fd: int) -> None:
    # The parent never writes to this pipe: a read returns only when every write end is
    # closed, i.e. the parent is gone. apsw releases the GIL while SQLite works, so this
    # thread runs even while a long query does.
    try:
        os.read(fd, 1)
    finally:
        os._exit(0)


def main(argv: list[str]) -> None:
    requests, replies, lifeline = (int(a) for a in argv[:3])
    memory_limit, max_result_bytes = int(argv[3]), int(argv[4])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no core file anywhere
    if memory_limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    threading.Thread(target=_watch_lifeline, args=(lifeline,), daemon=True).start()

    import apsw

    from .errors import SQLExecutionError
    from .sqlengine import Engine

    if memory_limit > 0:
        # SQLite's own allocations fail cleanly (SQLITE_NOMEM) well before the address-space
        # cap, which then catches what Python allocates for the rows.
        apsw.hard_heap_limit(memory_limit // 2)
    engine = Engine()
    write_frame(replies, pickle.dumps(("ready", os.getpid(), apsw.sqlite_lib_version())))
    while True:
        message = read_message(requests)
        if message is None:
            return
        try:
            reply = _handle(engine, message)
            payload = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
            if len(payload) > max_result_bytes:
                payload = pickle.dumps(("err", f"the result is {len(payload)} bytes, more than "
                                        f"MAX_RESULT_BYTES ({max_result_bytes})", "memory",
                                        message[4] if message[0] == "run" else None))
        except SQLExecutionError as e:
            payload = pickle.dumps(("err", str(e), e.kind, e.sql))
        except MemoryError:
            engine.close_all()  # frees the page caches; the next query reopens
            payload = pickle.dumps(("err", "out of memory while collecting the result rows",
                                    "memory", message[4] if message[0] == "run" else None))
        try:
            write_frame(replies, payload)
        except MemoryError:
            os._exit(EXIT_OUT_OF_MEMORY)
        except OSError:  # the parent closed its end: it killed this worker's query or left
            return


def _handle(engine, message: tuple) -> tuple:
    op = message[0]
    if op == "run":
        _, kind, target, shown, sql, timeout_s, max_rows, truncate, dqs, limits = message
        if kind == "file":
            out = engine.run_file(target, shown, sql, timeout_s, max_rows, truncate, limits, dqs)
        else:
            out = engine.run_schema(target, sql, timeout_s, max_rows, truncate, limits, dqs)
        return ("ok",) + out
    if op == "close":
        engine.close_all()
        return ("closed",)
    if op == "stats":
        return ("stats", {
            "pid": os.getpid(), "files": len(engine.files), "schemas": len(engine.schemas),
            "opened": engine.opened,
            "address_space_limit": resource.getrlimit(resource.RLIMIT_AS)[0],
            "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("mlx", "numpy")),
        })
    raise ValueError(f"unknown request {op!r}")


if __name__ == "__main__":  # pragma: no cover - started through sqlpool's boot line
    main(sys.argv[1:])
