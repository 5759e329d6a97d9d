"""Fixtures of the server tests: tiny models, databases, a server factory."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from serverkit import REPLY, ServerThread, make_db  # noqa: E402

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
    from tinymodels import make_programmed_model

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
