"""Concurrent requests are decoded together, and each gets its own answer: greedy replies of
a tiny random model (junk, but a deterministic function of each prompt) under 20 concurrent
clients equal the replies to the same requests sent one at a time."""

from __future__ import annotations

import concurrent.futures as cf
import time

import httpx

from mlx_text2sql.server import Limits
from mlx_text2sql.server.app import default_model_id

QUESTIONS = [f"{w} {n}?" for w in ("how many singers are older than", "which singer has age", "list notes over",
                                      "what is the name of the singer aged") for n in (20, 31, 40, 52, 77)]


def _ask(url: str, db: str, question: str) -> dict:
    r = httpx.post(url + "/v1/sql", json={"database": db, "question": question, "max_tokens": 24}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _chat(url: str, model: str, text: str) -> dict:
    r = httpx.post(url + "/v1/chat/completions", timeout=120,
                   json={"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": text}]})
    assert r.status_code == 200, r.text
    return r.json()


def test_concurrent_answers_equal_the_answers_given_alone(serve, random_service, music_db, other_db):
    s = serve(random_service, [music_db, other_db], limits=Limits(batch_window_s=0.05, max_batch=32))
    jobs = [("sql", db, q) for q in QUESTIONS for db in ("music",)] + \
           [("sql", "shop", q) for q in QUESTIONS[::4]] + \
           [("chat", None, q) for q in QUESTIONS[::5]]
    assert len(jobs) >= 16

    def run(job):
        kind, db, q = job
        if kind == "sql":
            a = _ask(s.url, db, q)
            return a["reply"], a["sql"]
        c = _chat(s.url, default_model_id(random_service), q)
        return c["choices"][0]["message"]["content"], c["usage"]["completion_tokens"]

    alone = [run(j) for j in jobs]
    batches_before = s.batcher.stats.batches
    assert s.batcher.stats.largest == 1
    # Many prompts share a reply (a random model mostly follows the last tokens), but enough
    # differ that an answer sent to the wrong request would show.
    assert len(set(alone)) >= 8

    with cf.ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(run, jobs))
    assert together == alone
    stats = s.batcher.stats
    assert stats.largest >= 8, stats.sizes  # decoded together, not one after another
    assert stats.batches - batches_before < len(jobs)
    assert s.batcher.queued == 0


def test_one_bad_request_in_a_batch_fails_alone(serve, programmed_service, music_db):
    from serverkit import REPLY

    # The batch starts when its fifth request arrives (max_batch), however slowly the clients
    # start: the window only bounds the wait.
    s = serve(programmed_service, [music_db], limits=Limits(batch_window_s=10.0, max_batch=5))
    bodies = [{"database": "music", "question": f"q{i}"} for i in range(5)]
    bodies[2]["tables"] = ["no_such_table"]  # the library refuses it before any model work
    with cf.ThreadPoolExecutor(len(bodies)) as pool:
        resps = list(pool.map(lambda b: httpx.post(s.url + "/v1/sql", json=b, timeout=60), bodies))
    assert [r.status_code for r in resps] == [200, 200, 400, 200, 200]
    assert "no_such_table" in resps[2].json()["error"]["message"]
    assert all(r.json()["sql"] == REPLY for i, r in enumerate(resps) if i != 2)
    assert s.batcher.stats.largest == 5  # they were one batch, answered one by one after it raised


def test_a_second_question_on_a_warm_database_computes_only_its_own_tokens(serve, programmed_service, music_db):
    stats = programmed_service.generator.stats
    programmed_service.generator.store.clear()
    s = serve(programmed_service, [music_db])

    def ask(q):
        before_total, before_computed = stats.prompt_tokens, stats.computed_prompt_tokens
        r = httpx.post(s.url + "/v1/sql", json={"database": "music", "question": q, "tables": []}, timeout=60)
        assert r.status_code == 200
        return stats.prompt_tokens - before_total, stats.computed_prompt_tokens - before_computed

    total, computed = ask("how many singers are there?")
    assert computed == total  # cold: the whole prompt
    total, computed = ask("which singer is the oldest?")
    assert computed < total / 4  # warm: the schema came from the prefix cache
    health = httpx.get(s.url + "/health").json()
    assert health["prefix_cache"]["entries"] >= 1 and 0 < health["prefix_cache"]["bytes"] <= health["prefix_cache"]["max_bytes"]


def test_a_job_cancelled_while_decoding_is_told_to_the_engine():
    """A decoding job whose client leaves reaches the service's ``cancelled`` hook, so its
    row stops decoding instead of running to its token limit; the other job is answered."""
    import asyncio
    import threading

    from mlx_text2sql.server.batcher import Batcher, Job

    started = threading.Event()
    seen: list[list[bool]] = []

    class Service:
        def complete(self, messages_list, *, cancelled=None, **kw):
            started.set()
            deadline = time.monotonic() + 10
            while not cancelled(0) and time.monotonic() < deadline:
                time.sleep(0.01)
            seen.append([cancelled(i) for i in range(len(messages_list))])
            return [f"reply {i}" for i in range(len(messages_list))]

        def ask_many(self, questions, *, options=None, cancelled=None):
            raise AssertionError("not used")

    async def scenario():
        loop = asyncio.get_running_loop()
        b = Batcher(Service(), window_s=0.05)
        b.start()
        try:
            jobs = [Job("complete", [{"role": "user", "content": str(i)}], {}, loop, loop.create_future())
                    for i in range(2)]
            for j in jobs:
                b.submit(j)
            await loop.run_in_executor(None, started.wait, 5)
            b.cancel(jobs[0])
            assert await asyncio.wait_for(jobs[1].future, 5) == "reply 1"
            assert not jobs[0].future.done()
            return b.stats
        finally:
            b.stop()

    stats = asyncio.run(scenario())
    assert seen == [[True, False]]
    assert (stats.cancelled, stats.dropped, stats.batches) == (1, 1, 1)
