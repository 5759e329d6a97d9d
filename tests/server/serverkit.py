"""Helpers of the server tests: the programmed model's reply, a database whose cells hold
markup, and an in-process uvicorn server on an ephemeral loopback port."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

# What the programmed model answers to every prompt (see tests/test_engine.py).
REPLY = "SELECT name, note FROM singer WHERE age > 30"
SCRIPT_CELL = "<script>document.title='pwned'</script>"


def make_db(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE singer (name TEXT PRIMARY KEY, age INTEGER, note TEXT)")
    con.executemany("INSERT INTO singer VALUES (?, ?, ?)", [
        ("Art Long", 31, SCRIPT_CELL), ("Mike", 40, "<b>bold</b> & <i>more</i>"),
        ("Butler", 25, "young"), ("Zed", 52, None)])
    con.execute('CREATE TABLE "concert" ("id" INTEGER PRIMARY KEY, "singer" TEXT REFERENCES singer(name), "year" REAL)')
    con.executemany("INSERT INTO concert VALUES (?, ?, ?)", [(1, "Mike", 2001.0), (2, "Zed", 2003.0)])
    con.commit()
    con.close()
    return path



class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1 with a free port, in a thread of this process."""

    def __init__(self, app):
        import uvicorn

        self.config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                                     timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.app = app

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    @property
    def batcher(self):
        return self.app.state.batcher
