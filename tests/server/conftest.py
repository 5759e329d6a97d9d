"""Fixtures for the server tests: tiny models, a database whose cells hold markup, and an
in-process uvicorn server on an ephemeral loopback port."""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))

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


@pytest.fixture(scope="session")
def music_db(tmp_path_factory) -> Path:
    return make_db(tmp_path_factory.mktemp("serve_db") / "music.sqlite")


@pytest.fixture(scope="session")
def other_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve_db2") / "shop.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE item (sku TEXT, price REAL)")
    con.executemany("INSERT INTO item VALUES (?, ?)", [("a1", 2.5), ("b2", 4.0), ("c3", 9.75)])
    con.commit()
    con.close()
    return path


@pytest.fixture(scope="session")
def programmed_service(tmp_path_factory):
    """The library object over a tiny model that always answers REPLY."""
    from test_engine import make_programmed_model

    from mlx_text2sql.api import Text2SQL

    path = make_programmed_model(tmp_path_factory.mktemp("serve_prog"), REPLY, "chatml")
    return Text2SQL.load(str(path))


@pytest.fixture(scope="session")
def random_service(tmp_path_factory):
    """The library object over a tiny random model: junk replies, but each one a deterministic
    function of its prompt, so replies identify which prompt they belong to."""
    from tinymodels import make_tiny_model

    from mlx_text2sql.api import Text2SQL

    path = make_tiny_model(tmp_path_factory.mktemp("serve_rand"), "llama", "chatml", seed=3)
    return Text2SQL.load(str(path))


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


@pytest.fixture
def serve():
    """``serve(service, databases, **create_app_kwargs)`` -> a started ServerThread (stopped
    after the test)."""
    from mlx_text2sql.server import DatabaseRegistry, create_app

    started = []

    def start(service, dbs, **kw):
        registry = DatabaseRegistry([(None, p) if not isinstance(p, tuple) else p for p in dbs])
        s = ServerThread(create_app(service, registry, **kw)).__enter__()
        started.append(s)
        return s

    yield start
    for s in started:
        s.__exit__(None, None, None)
