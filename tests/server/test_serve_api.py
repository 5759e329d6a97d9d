"""Each endpoint of the server, each error status, the API key and the limits, against an
in-process uvicorn server on a loopback port with a tiny programmed model (it answers
conftest.REPLY to every prompt)."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from serverkit import REPLY, SCRIPT_CELL

from mlx_text2sql.server import Limits
from mlx_text2sql.server.app import default_model_id


@pytest.fixture
def server(serve, programmed_service, music_db, other_db):
    return serve(programmed_service, [music_db, ("shop", other_db)])


def error_of(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["message"]
    return body["error"]


# --------------------------------------------------------------------------- endpoints


def test_health_and_models(server, programmed_service):
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["databases"] == 2 and h["auth"] is False
    models = httpx.get(server.url + "/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == [h["model"]] == [default_model_id(programmed_service)]
    assert "/" not in h["model"]  # the model folder's name, not the server's path to it


def test_databases_list_the_schema_with_types_keys_and_row_counts(server):
    data = httpx.get(server.url + "/v1/databases").json()["data"]
    assert [d["name"] for d in data] == ["music", "shop"]
    singer, concert = data[0]["tables"]
    assert singer["name"] == "singer" and singer["rows"] == 4
    assert [(c["name"], c["type"], c["primary_key"]) for c in singer["columns"]] == [
        ("name", "TEXT", True), ("age", "INTEGER", False), ("note", "TEXT", False)]
    assert concert["rows"] == 2 and concert["primary_key"] == ["id"]
    assert concert["foreign_keys"] == [{"column": "singer", "table": "singer", "references": "name"}]
    assert "path" not in json.dumps(data) and "/" not in json.dumps(data)  # no server path leaks
    one = httpx.get(server.url + "/v1/databases/shop").json()
    assert one == data[1]


def test_sql_answers_sql_rows_and_timings(server):
    r = httpx.post(server.url + "/v1/sql", json={"database": "music", "question": "who is over 30?"}, timeout=60)
    assert r.status_code == 200, r.text
    a = r.json()
    assert a["sql"] == REPLY and a["reply"].strip() == REPLY and a["database"] == "music"
    assert a["columns"] == ["name", "note"]
    assert a["rows"] == [["Art Long", SCRIPT_CELL], ["Mike", "<b>bold</b> & <i>more</i>"], ["Zed", None]]
    assert a["truncated"] is False and a["error_kind"] is None and a["error"] is None
    t = a["timings"]
    assert set(t) == {"queue_s", "prompt_s", "decode_s", "execute_s", "total_s"}
    assert all(v >= 0 for v in t.values()) and t["total_s"] >= t["decode_s"]
    # max_rows truncates; execute=False answers the SQL without rows
    a = httpx.post(server.url + "/v1/sql", json={"database": "music", "question": "q", "max_rows": 2}, timeout=60).json()
    assert len(a["rows"]) == 2 and a["truncated"] is True
    a = httpx.post(server.url + "/v1/sql", json={"database": "music", "question": "q", "execute": False}, timeout=60).json()
    assert a["sql"] == REPLY and a["rows"] is None


def test_sql_on_a_database_without_the_table_is_an_error_in_the_answer(server, other_db):
    r = httpx.post(server.url + "/v1/sql", json={"database": "shop", "question": "q"}, timeout=60)
    assert r.status_code == 200
    a = r.json()
    assert a["sql"] == REPLY and a["rows"] is None
    assert a["error_kind"] and "no such table" in a["error"]
    assert str(other_db) not in a["error"]  # named by its name, not by the server's path


def test_execute_runs_read_only(server):
    r = httpx.post(server.url + "/v1/execute", json={"database": "shop", "sql": "SELECT sku FROM item WHERE price > 3"})
    assert r.status_code == 200
    assert r.json()["rows"] == [["b2"], ["c3"]] and r.json()["columns"] == ["sku"]
    for sql in ("DROP TABLE item", "SELECT 1; DELETE FROM item", "ATTACH '/tmp/x.db' AS x"):
        r = httpx.post(server.url + "/v1/execute", json={"database": "shop", "sql": sql})
        assert r.status_code == 200 and r.json()["rows"] is None and r.json()["error_kind"], sql
    assert httpx.post(server.url + "/v1/execute", json={"database": "shop", "sql": "SELECT COUNT(*) FROM item"}).json()["rows"] == [[3]]


def test_the_page_and_its_files_are_served_with_a_strict_policy(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert '<script src="/static/app.js"' in r.text and "http" not in r.text.replace("http-equiv", "")
    for name, kind in (("app.js", "javascript"), ("style.css", "css")):
        r = httpx.get(f"{server.url}/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
        assert "//cdn" not in r.text and "https://" not in r.text
    assert "innerHTML" not in httpx.get(server.url + "/static/app.js").text


# --------------------------------------------------------------------------- errors


def test_each_error_is_json_with_its_status(server):
    u = server.url
    cases = [
        (httpx.post(u + "/v1/sql", content=b"{not json", headers={"Content-Type": "application/json"}), 400, "invalid_request"),
        (httpx.post(u + "/v1/sql", json={"database": "nope", "question": "q"}), 404, "not_found"),
        (httpx.post(u + "/v1/execute", json={"database": "../music.sqlite", "sql": "SELECT 1"}), 404, "not_found"),
        (httpx.get(u + "/v1/nothing"), 404, "not_found"),
        (httpx.get(u + "/v1/databases/nope"), 404, "not_found"),
        (httpx.get(u + "/v1/sql"), 405, "method_not_allowed"),
        (httpx.post(u + "/v1/sql", json={"database": "music"}), 422, "validation_error"),
        (httpx.post(u + "/v1/sql", json={"database": "music", "question": ""}), 422, "validation_error"),
        (httpx.post(u + "/v1/sql", json={"database": "music", "question": "q", "max_row": 3}), 422, "validation_error"),
        (httpx.post(u + "/v1/sql", json={"database": "music", "question": "q", "max_rows": "many"}), 422, "validation_error"),
        (httpx.post(u + "/v1/sql", json={"database": "music", "question": "q", "tables": ["nope"]}, timeout=60), 400, "invalid_request"),
        (httpx.post(u + "/v1/sql", content=b'{"database": "music", "question": "q"}', headers={"Content-Type": "text/plain"}), 422, "validation_error"),
        (httpx.post(u + "/v1/chat/completions", json={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}), 404, "model_not_found"),
        (httpx.post(u + "/v1/chat/completions", json={"model": "x", "messages": []}), 422, "validation_error"),
    ]
    for resp, status, kind in cases:
        assert resp.status_code == status, (resp.request.url, resp.text)
        assert error_of(resp)["type"] == kind, resp.text
    # the database named in the 404 is listed with the ones the server has
    assert "music, shop" in error_of(cases[1][0])["message"]
    # the server still answers after all of these
    assert httpx.post(u + "/v1/sql", json={"database": "music", "question": "q"}, timeout=60).json()["sql"] == REPLY


def test_limits_on_question_rows_tokens_and_body(serve, programmed_service, music_db):
    s = serve(programmed_service, [music_db], limits=Limits(max_question_chars=50, max_rows=10, max_tokens=32,
                                                            default_max_tokens=32, max_body_bytes=2048))
    u = s.url
    for body, what in (({"question": "x" * 51}, "length"), ({"max_rows": 11}, "max_rows"),
                       ({"max_tokens": 33}, "max_tokens")):
        r = httpx.post(u + "/v1/sql", json={"database": "music", "question": "q", **body})
        assert r.status_code == 422 and what in error_of(r)["message"], r.text
    chat = {"model": default_model_id(programmed_service), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 33}
    r = httpx.post(u + "/v1/chat/completions", json=chat)
    assert r.status_code == 422 and "max_tokens" in error_of(r)["message"]
    big = {"database": "music", "question": "q" * 3000}
    r = httpx.post(u + "/v1/sql", json=big)
    assert r.status_code == 413 and error_of(r)["type"] == "request_too_large"

    def chunks():  # no Content-Length: the body is counted as it arrives
        for _ in range(10):
            yield b" " * 500
        yield json.dumps({"database": "music", "question": "q"}).encode()

    r = httpx.post(u + "/v1/sql", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and error_of(r)["type"] == "request_too_large"
    assert httpx.post(u + "/v1/sql", json={"database": "music", "question": "q"}, timeout=60).status_code == 200


def test_checks_run_in_order_key_then_database_or_model_then_limits(serve, programmed_service, music_db):
    """A request that breaks several rules gets the first one's error: the API key (401), then
    the database or model it names (404), then each limit (422), so a client fixes the most
    basic problem first."""
    s = serve(programmed_service, [music_db], api_key="k3y",
              limits=Limits(max_question_chars=5, max_sql_chars=5, max_tokens=8, default_max_tokens=8,
                            max_exec_guided=2))
    u, key = s.url, {"X-API-Key": "k3y"}
    model = default_model_id(programmed_service)
    long_q = {"question": "x" * 6, "max_tokens": 9}
    cases = [
        ("/v1/sql", {"database": "nope", **long_q}, {}, 401, "unauthorized"),
        ("/v1/sql", {"database": "nope", **long_q}, key, 404, "no database 'nope'"),
        ("/v1/sql", {"database": "music", **long_q}, key, 422, "the question's length is 6"),
        ("/v1/sql", {"database": "music", "question": "q", "exec_guided": 3}, key, 422, "exec_guided is 3"),
        ("/v1/execute", {"database": "nope", "sql": "SELECT 12345"}, key, 404, "no database 'nope'"),
        ("/v1/execute", {"database": "music", "sql": "SELECT 12345"}, key, 422, "the SQL's length is 12"),
        ("/v1/chat/completions", {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}],
                                  "max_tokens": 9}, key, 404, "no model 'gpt-4'"),
        ("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "hi"}],
                                  "max_tokens": 9}, key, 422, "max_tokens is 9"),
    ]
    for path, body, headers, status, message in cases:
        r = httpx.post(u + path, json=body, headers=headers)
        assert r.status_code == status and message in r.text, (path, body, r.text)


def test_a_full_queue_answers_503_with_retry_after(serve, programmed_service, music_db):
    # A long collection window holds the first two requests in the queue while the third comes.
    s = serve(programmed_service, [music_db], limits=Limits(max_queue=2, batch_window_s=1.5))
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(2) as pool:
        first = [pool.submit(httpx.post, s.url + "/v1/sql", json={"database": "music", "question": f"q{i}"}, timeout=60)
                 for i in range(2)]
        deadline = time.monotonic() + 10
        while s.batcher.queued < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = httpx.post(s.url + "/v1/sql", json={"database": "music", "question": "third"})
        assert r.status_code == 503 and error_of(r)["type"] == "overloaded"
        assert int(r.headers["retry-after"]) >= 1
        assert [f.result().status_code for f in first] == [200, 200]
    assert s.batcher.stats.largest == 2  # the two waiting requests were decoded together
    assert httpx.post(s.url + "/v1/sql", json={"database": "music", "question": "q"}, timeout=60).status_code == 200


def test_time_limit_answers_503_and_frees_the_place(serve, programmed_service, music_db):
    s = serve(programmed_service, [music_db], limits=Limits(timeout_s=0.3, batch_window_s=3.0))
    t = time.monotonic()
    r = httpx.post(s.url + "/v1/sql", json={"database": "music", "question": "q"}, timeout=30)
    assert r.status_code == 503 and error_of(r)["type"] == "timeout" and "retry-after" in r.headers
    assert time.monotonic() - t < 0.3 + 2.0
    assert s.batcher.queued == 0


def test_a_client_that_disconnects_frees_its_place(serve, programmed_service, music_db):
    # A long collection window keeps each request waiting until its client leaves.
    s = serve(programmed_service, [music_db], limits=Limits(batch_window_s=5.0))
    stats = s.batcher.stats

    def settle(submitted: int) -> None:
        deadline = time.monotonic() + 4
        while (stats.submitted < submitted or s.batcher.queued) and time.monotonic() < deadline:
            time.sleep(0.02)

    with pytest.raises(httpx.ReadTimeout):
        httpx.post(s.url + "/v1/sql", json={"database": "music", "question": "q"}, timeout=0.3)
    settle(1)
    assert (stats.submitted, stats.cancelled, s.batcher.queued, stats.batches) == (1, 1, 0, 0)
    # mid-stream: read the first event, then leave
    chat = {"model": default_model_id(programmed_service), "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", s.url + "/v1/chat/completions", json=chat, timeout=30) as r:
        assert r.status_code == 200
        first = next(r.iter_lines())
        assert first.startswith("data: ") and json.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"
        assert stats.submitted == 2
    settle(2)
    # both left the queue because their clients left, before any batch ran
    assert (stats.submitted, stats.cancelled, s.batcher.queued, stats.batches) == (2, 2, 0, 0)


# --------------------------------------------------------------------------- API key, hosts


def test_api_key_is_checked_on_every_v1_route(serve, programmed_service, music_db, monkeypatch):
    import hmac

    from mlx_text2sql.server import limits as limits_mod

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(limits_mod.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    s = serve(programmed_service, [music_db], api_key="s3cret-key")
    u = s.url
    routes = [("GET", "/v1/models", None), ("GET", "/v1/databases", None), ("GET", "/v1/databases/music", None),
              ("POST", "/v1/sql", {"database": "music", "question": "q"}),
              ("POST", "/v1/execute", {"database": "music", "sql": "SELECT 1"}),
              ("POST", "/v1/chat/completions", {"model": default_model_id(programmed_service),
                                                "messages": [{"role": "user", "content": "hi"}]})]
    for method, path, body in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-key"},
                        {"X-API-Key": "s3cret-ke"}):
            r = httpx.request(method, u + path, json=body, headers=headers)
            assert r.status_code == 401, (path, headers)
            assert error_of(r)["type"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
        for headers in ({"Authorization": "Bearer s3cret-key"}, {"X-API-Key": "s3cret-key"}):
            r = httpx.request(method, u + path, json=body, headers=headers, timeout=60)
            assert r.status_code == 200, (path, r.text)
    assert len(calls) == 6 * 4  # every key sent (2 wrong, 2 right per route) went through compare_digest
    # the page and health need no key (the page asks for it), and say that one is needed
    assert httpx.get(u + "/").status_code == 200
    assert httpx.get(u + "/health").json()["auth"] is True


def test_a_foreign_host_header_is_refused_on_a_loopback_server(serve, programmed_service, music_db):
    s = serve(programmed_service, [music_db], allowed_hosts=["127.0.0.1", "localhost"])
    assert httpx.get(s.url + "/health").status_code == 200
    r = httpx.get(s.url + "/health", headers={"Host": "attacker.example:8000"})
    assert r.status_code == 400 and "attacker.example" in error_of(r)["message"]


def test_fix_names_repairs_what_the_model_misnames(serve, music_db, tmp_path):
    from tinymodels import make_programmed_model

    from mlx_text2sql.api import Text2SQL

    path = make_programmed_model(tmp_path / "misnaming", "SELECT names FROM singer")
    srv = serve(Text2SQL.load(str(path)), [music_db])
    ask = {"database": "music", "question": "the names of the singers"}
    raw = httpx.post(srv.url + "/v1/sql", json=ask, timeout=60).json()
    assert raw["error_kind"] and "no such column: names" in raw["error"] and raw["rows"] is None
    fixed = httpx.post(srv.url + "/v1/sql", json={**ask, "fix_names": True}, timeout=60).json()
    assert fixed["sql_greedy"] == "SELECT names FROM singer"
    assert fixed["sql"] == 'SELECT "name" FROM singer'
    assert [(f["kind"], f["old"], f["new"]) for f in fixed["name_fixes"]] == [("column", "names", "name")]
    assert raw["name_fixes"] == [] and fixed["value_fixes"] == []
    assert fixed["error"] is None and fixed["columns"] == ["name"] and len(fixed["rows"]) == 4


def test_constrain_names_decodes_only_the_database_s_names(serve, music_db, tmp_path):
    from tinymodels import make_programmed_model

    from mlx_text2sql.api import Text2SQL

    path = make_programmed_model(tmp_path / "misnaming", "SELECT names FROM singer")
    srv = serve(Text2SQL.load(str(path)), [music_db])
    ask = {"database": "music", "question": "the names of the singers", "max_tokens": 16}
    bound = httpx.post(srv.url + "/v1/sql", json={**ask, "constrain_names": True}, timeout=60).json()
    assert bound["reply"].startswith("SELECT name") and "names" not in bound["reply"].split()
    bad = httpx.post(srv.url + "/v1/sql", json={**ask, "constrain_names": True, "temperature": 0.5}, timeout=60)
    assert bad.status_code == 400 and "constrain_names needs greedy decoding" in error_of(bad)["message"]
    assert httpx.post(srv.url + "/v1/sql", json=ask, timeout=60).json()["sql"] == "SELECT names FROM singer"
