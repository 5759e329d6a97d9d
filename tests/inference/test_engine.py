"""The batched generation engine: parity with unbatched greedy decoding (mlx_lm's own
``generate_step``), batching and prefix-cache invariance, stopping on EOS ids and stop strings,
streaming, sampling.

Two kinds of tiny models: random ones (session fixtures from conftest) whose replies are
arbitrary token soup, compared token for token against mlx_lm; and "programmed" ones
(:func:`make_programmed_model`) whose weights are set so that greedy decoding writes a chosen
reply, so stopping and extraction have a known answer.
"""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.generate import generate_step

from tinymodels import make_programmed_model

from mlx_text2sql.inference.engine import PrefixStore, SQLGenerator
from mlx_text2sql.inference.engine.cache import _lcp
from mlx_text2sql.models import load_model
from mlx_text2sql.prompts import build_messages

SCHEMAS = [
    'CREATE TABLE "singer" (\n  "name" TEXT,\n  "age" INTEGER,\n  "country" TEXT,\n  "song_name" TEXT\n);\n'
    "/* 3 example rows from \"singer\":\nname | age | country | song_name\nArt Long | 31 | France | Hey\n"
    "Mike | 40 | United States | Ohio\nButler | 25 | Kansas | Guard\n*/",
    'CREATE TABLE "head" ("id" INT, "born_state" TEXT, "age" REAL, "department_id" INT)',
    "CREATE TABLE t (a INT)",
]
QUESTIONS = [
    "how many singers?", "what is the name of the oldest singer", "list all", "which state",
    "average age of heads born in the state of Alabama and older than 56", "who", "count",
    "what are the names of all the singers who are older than the average age of all singers in France",
    "max age", "min age", "names", "ids",
]


def prompts_set():
    return [build_messages(q, SCHEMAS[i % 3]) for i, q in enumerate(QUESTIONS)]


def reference_tokens(lm, tokens, n):
    """Unbatched greedy decoding by mlx_lm itself (no stopping: ``n`` tokens)."""
    return [int(t) for t, _ in generate_step(mx.array(tokens), lm.model, max_tokens=n)]


# --------------------------------------------------------------------------- programmed models

@pytest.fixture(scope="module")
def programmed(tmp_path_factory):
    return make_programmed_model(tmp_path_factory.mktemp("prog"), 'SELECT name FROM singer WHERE age > 30')


# --------------------------------------------------------------------------- parity

@pytest.fixture(scope="module")
def lm_random(tiny_llama):
    return load_model(str(tiny_llama))


@pytest.mark.parametrize("host_math", [True, False])
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_greedy_matches_unbatched_mlx_lm(lm_random, batch_size, host_math):
    gen = SQLGenerator(lm_random, host_math=host_math)
    assert gen.uses_host_math() is host_math
    prompts = prompts_set()
    results = gen.generate(prompts, max_tokens=12, batch_size=batch_size)
    for p, r in zip(prompts, results):
        assert r.tokens == reference_tokens(lm_random, gen.prompt_tokens(p), 12)
        assert r.n_tokens == 12 and r.finish_reason == "length"
        assert r.n_prompt_tokens == len(gen.prompt_tokens(p))


def test_rows_finishing_at_different_steps_refill_the_batch_without_changing_tokens(lm_random):
    """Stop strings end rows early at different steps; freed rows are refilled mid-decode
    (continuous batching) and every row still gets exactly mlx_lm's tokens up to its stop."""
    prompts = prompts_set() * 2
    gen = SQLGenerator(lm_random)
    refs = [reference_tokens(lm_random, gen.prompt_tokens(p), 20) for p in prompts]
    unbatched = SQLGenerator(lm_random).generate(prompts, max_tokens=20, batch_size=1, stop=["e", "<"])
    lengths = {r.n_tokens for r in unbatched}
    assert len(lengths) > 2, "the stop strings should end rows at different steps"
    for bs in (2, 5, 8):
        gen = SQLGenerator(lm_random)
        results = gen.generate(prompts, max_tokens=20, batch_size=bs, stop=["e", "<"])
        for r, u, ref in zip(results, unbatched, refs):
            assert r.tokens == u.tokens == ref[: len(r.tokens)]
            assert r.text == u.text
        assert gen.stats.decode_row_steps > gen.stats.decode_steps  # rows really shared steps


@pytest.mark.parametrize("block_tokens", [1, 4, 64])
def test_prompt_remainders_prefilled_as_a_block_or_alone_agree(lm_random, block_tokens):
    prompts = prompts_set()
    base = SQLGenerator(lm_random, prefix_cache_mb=0).generate(prompts, max_tokens=8, batch_size=1)
    gen = SQLGenerator(lm_random, block_tokens=block_tokens)
    results = gen.generate(prompts, max_tokens=8, batch_size=6)
    assert [r.tokens for r in results] == [r.tokens for r in base]


def test_other_architectures_and_templates_match_mlx_lm(tiny_mistral, tiny_tinyllama):
    for folder in (tiny_mistral, tiny_tinyllama):
        lm = load_model(str(folder))
        gen = SQLGenerator(lm)
        prompts = prompts_set()[:5]
        results = gen.generate(prompts, max_tokens=6, batch_size=4)
        for p, r in zip(prompts, results):
            assert r.tokens == reference_tokens(lm, gen.prompt_tokens(p), 6)


def test_prefix_cache_is_reused_across_calls_and_gives_the_same_tokens(lm_random):
    gen = SQLGenerator(lm_random)
    p1 = build_messages("how many singers are there?", SCHEMAS[0])
    p2 = build_messages("which singer is the oldest?", SCHEMAS[0])
    [r1] = gen.generate([p1], max_tokens=6)
    assert r1.n_cached_tokens == 0
    [r2] = gen.generate([p2], max_tokens=6)
    t2 = gen.prompt_tokens(p2)
    shared = _lcp(gen.prompt_tokens(p1), t2)
    assert r2.n_cached_tokens == shared > len(t2) // 2  # the schema came from the store
    assert r2.tokens == reference_tokens(lm_random, t2, 6)
    assert gen.stats.computed_prompt_tokens == len(gen.prompt_tokens(p1)) + len(t2) - shared


def test_questions_on_one_schema_share_its_prefill(lm_random):
    gen = SQLGenerator(lm_random, prefix_cache_mb=0)
    prompts = [build_messages(q, SCHEMAS[0]) for q in QUESTIONS[:6]]
    results = gen.generate(prompts, max_tokens=3, batch_size=8)
    total = sum(len(gen.prompt_tokens(p)) for p in prompts)
    assert all(r.n_cached_tokens > 0 for r in results)
    # the schema is computed once, not six times
    assert gen.stats.computed_prompt_tokens < total / 3
    for p, r in zip(prompts, results):
        assert r.tokens == reference_tokens(lm_random, gen.prompt_tokens(p), 3)


def test_prefix_store_lookup_and_byte_bound():
    from mlx_text2sql.inference.engine.cache import _Prefix

    def entry(tokens):
        kv = [(mx.zeros((1, 1, len(tokens), 4)), mx.zeros((1, 1, len(tokens), 4)))]
        return _Prefix(tuple(tokens), kv)

    one = entry([1, 2, 3, 4]).nbytes
    store = PrefixStore(max_bytes=2 * one, keep=1)
    store.add(entry([1, 2, 3, 4]))
    store.add(entry([1, 2, 9, 9]))
    e, n = store.lookup([1, 2, 3, 7, 7])
    assert e.tokens == (1, 2, 3, 4) and n == 3
    store.add(entry([5, 6, 7, 8]))  # evicts the least recently used: (1, 2, 9, 9)
    assert set(store.entries) == {(1, 2, 3, 4), (5, 6, 7, 8)}
    assert store.lookup([9])[0] is None and store.nbytes == 2 * one


# --------------------------------------------------------------------------- stopping

def test_programmed_model_stops_at_eos(programmed):
    lm = load_model(str(programmed))
    gen = SQLGenerator(lm)
    prompts = [build_messages(q, SCHEMAS[i % 3]) for i, q in enumerate(QUESTIONS[:5])]
    for r in gen.generate(prompts, max_tokens=50, batch_size=4):
        assert r.text == "SELECT name FROM singer WHERE age > 30"
        assert r.sql == r.text
        assert r.finish_reason == "stop"
        assert r.tokens[-1] in lm.eos_token_ids
        assert r.n_tokens == len(lm.tokenizer.encode(r.text, add_special_tokens=False)) + 1


def test_max_tokens_cuts_the_reply(programmed):
    lm = load_model(str(programmed))
    [r] = SQLGenerator(lm).generate([build_messages("q", SCHEMAS[0])], max_tokens=3)
    assert r.finish_reason == "length" and r.n_tokens == 3
    assert "SELECT name FROM singer".startswith(r.text) and r.text


def test_stop_string_spanning_tokens_is_cut_and_never_streamed(programmed):
    lm = load_model(str(programmed))
    pieces: dict[int, list[str]] = {}
    results = SQLGenerator(lm).generate(
        [build_messages("q", SCHEMAS[0]), build_messages("q2", SCHEMAS[1])], max_tokens=50,
        stop=[" WHERE ag"], stream_callback=lambda i, s: pieces.setdefault(i, []).append(s))
    for i, r in enumerate(results):
        assert r.text == "SELECT name FROM singer"
        assert r.finish_reason == "stop"
        assert "".join(pieces[i]) == r.text  # the held-back " WHERE" never reached the stream


@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_a_cancelled_row_stops_at_once_and_the_others_are_unchanged(lm_random, batch_size):
    """cancelled(i) ends row i at the next token (or before its prefill) and frees its place;
    the other rows get the same tokens as without it."""
    prompts = prompts_set()[:5]
    base = SQLGenerator(lm_random).generate(prompts, max_tokens=12, batch_size=batch_size, stop=[])
    gen = SQLGenerator(lm_random)
    seen: list[str] = []  # row 1's streamed pieces (no stop strings: nothing is held back)

    def cancelled(i: int) -> bool:  # row 3 before it starts, row 1 after three pieces
        return i == 3 or (i == 1 and len(seen) >= 3)

    results = gen.generate(prompts, max_tokens=12, batch_size=batch_size, cancelled=cancelled, stop=[],
                           stream_callback=lambda i, piece: seen.append(piece) if i == 1 else None)
    assert results[3].finish_reason == "cancelled" and results[3].n_tokens == 0 and results[3].text == ""
    assert results[1].finish_reason == "cancelled" and 2 <= results[1].n_tokens < 12
    assert results[1].tokens[:-1] == base[1].tokens[: results[1].n_tokens - 1]
    for i in (0, 2, 4):
        assert results[i].tokens == base[i].tokens and results[i].finish_reason == base[i].finish_reason
    assert gen.stats.generated_tokens < sum(r.n_tokens for r in base)


@pytest.mark.parametrize("draft_tokens", [0, 4])
def test_cancelled_rows_left_last_in_the_queue_end_the_call(lm_random, draft_tokens):
    """Rows cancelled before their turn, when nothing else is decoding (the last prompts, or
    all of them), end the call instead of leaving the loop with no batch."""
    prompts = prompts_set()[:3]
    gen = SQLGenerator(lm_random, draft_tokens=draft_tokens)
    base = gen.generate(prompts, max_tokens=6, batch_size=1)
    results = gen.generate(prompts, max_tokens=6, batch_size=1, cancelled=lambda i: i == 2)
    assert [r.finish_reason for r in results[:2]] == [r.finish_reason for r in base[:2]]
    assert [r.tokens for r in results[:2]] == [r.tokens for r in base[:2]]
    assert results[2].finish_reason == "cancelled" and results[2].n_tokens == 0
    assert [r.finish_reason for r in gen.generate(prompts, max_tokens=6, batch_size=4,
                                                  cancelled=lambda i: True)] == ["cancelled"] * 3


def test_cancelled_questions_are_neither_refined_nor_executed(programmed, tmp_path):
    import sqlite3

    from mlx_text2sql.api import AskOptions, Text2SQL

    db = tmp_path / "s.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE singer (name TEXT, age INT)")
        con.execute("INSERT INTO singer VALUES ('Ann', 40)")
    t2s = Text2SQL.load(str(programmed))
    answers = t2s.ask_many(["q0", "q1", "q2"], db=db, options=AskOptions(vote=2),
                           cancelled=lambda i: i == 1)
    assert [a.finish_reason for a in answers] == ["stop", "cancelled", "stop"]
    assert answers[1].sql is None and answers[1].rows is None and answers[1].guided is None
    assert answers[0].rows == answers[2].rows == [["Ann"]]
    done = t2s.complete([[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]],
                        cancelled=lambda i: i == 0)
    assert done[0].finish_reason == "cancelled" and done[0].n_tokens == 0
    assert done[1].text == "SELECT name FROM singer WHERE age > 30"


def test_streaming_pieces_add_up_to_the_reply(programmed):
    lm = load_model(str(programmed))
    pieces = []
    [r] = SQLGenerator(lm).generate([build_messages("q", SCHEMAS[0])],
                                   stream_callback=lambda i, s: pieces.append((i, s)))
    assert len(pieces) > 1 and {i for i, _ in pieces} == {0}
    assert "".join(s for _, s in pieces) == r.text == "SELECT name FROM singer WHERE age > 30"


def test_templates_eos_is_learned_stop(tmp_path):
    """Zephyr and [INST] models end their turn with </s>: generation stops there too."""
    for template, arch in (("zephyr", "llama"), ("mistral", "mistral")):
        folder = make_programmed_model(tmp_path / template, "SELECT COUNT(*) FROM head", template, arch)
        lm = load_model(str(folder))
        [r] = SQLGenerator(lm).generate([build_messages("how many heads?", SCHEMAS[1])], max_tokens=40)
        assert (r.text, r.finish_reason) == ("SELECT COUNT(*) FROM head", "stop"), template


def test_sampling_is_seeded_and_temperature_changes_output(lm_random):
    gen = SQLGenerator(lm_random)
    prompts = prompts_set()[:4]
    a = gen.generate(prompts, max_tokens=10, temp=1.5, seed=7)
    b = gen.generate(prompts, max_tokens=10, temp=1.5, seed=7)
    greedy = gen.generate(prompts, max_tokens=10)
    assert [r.tokens for r in a] == [r.tokens for r in b]
    assert [r.tokens for r in a] != [r.tokens for r in greedy]


def test_top_p_keeps_only_the_likely_tokens(programmed):
    """At temperature 50 the programmed reply's token is ~1% likely after tempering, so plain
    sampling wanders off; top-p works on the untempered distribution, where that token holds
    nearly all the mass, so top_p=0.5 keeps it alone."""
    lm = load_model(str(programmed))
    gen = SQLGenerator(lm)
    prompts = [build_messages("q", SCHEMAS[0])] * 3
    wild = gen.generate(prompts, max_tokens=8, temp=50.0, seed=1)
    assert all(not r.text.startswith("SELECT name") for r in wild)
    nucleus = gen.generate(prompts, max_tokens=50, temp=50.0, top_p=0.5, seed=1)
    assert [r.text for r in nucleus] == ["SELECT name FROM singer WHERE age > 30"] * 3


def test_prompt_tokens_match_the_trainers_encoding(tiny_llama, tiny_mistral, tiny_tinyllama):
    """Generation must feed the model the prompt tokens training taught it."""
    from mlx_text2sql.tuner.data import Encoder

    for folder in (tiny_llama, tiny_mistral, tiny_tinyllama):
        lm = load_model(str(folder))
        enc = Encoder(lm.tokenizer, lm.eos)
        msgs = build_messages("how many?", SCHEMAS[0])
        assert SQLGenerator(lm).prompt_tokens(msgs) == enc.encode_prompt(enc.chat(msgs, add_generation_prompt=True))


def test_bad_arguments(lm_random):
    gen = SQLGenerator(lm_random)
    with pytest.raises(ValueError):
        gen.generate([build_messages("q", SCHEMAS[0])], max_tokens=0)
    with pytest.raises(ValueError):
        gen.generate([build_messages("q", SCHEMAS[0])], batch_size=0)
    assert gen.generate([]) == []


def test_results_are_json_friendly(programmed):
    from dataclasses import asdict

    lm = load_model(str(programmed))
    [r] = SQLGenerator(lm).generate([build_messages("q", SCHEMAS[0])])
    assert json.loads(json.dumps(asdict(r)))["sql"] == r.sql


def test_unbatched_fallback_gives_the_same_replies(lm_random, programmed):
    """Models whose caches are not plain KVCaches go one prompt at a time through mlx_lm's
    generate_step, with the same stopping rules and results."""
    prompts = prompts_set()[:5]
    batched = SQLGenerator(lm_random).generate(prompts, max_tokens=15, batch_size=4, stop=["e"])
    gen = SQLGenerator(lm_random)
    gen.batched = False
    done = []
    fallback = gen.generate(prompts, max_tokens=15, stop=["e"], progress=done.append)
    assert [r.tokens for r in fallback] == [r.tokens for r in batched]
    assert [r.text for r in fallback] == [r.text for r in batched]
    assert sum(done) == len(prompts)
    lm = load_model(str(programmed))
    gen = SQLGenerator(lm)
    gen.batched = False
    [r] = gen.generate([build_messages("q", SCHEMAS[0])], max_tokens=50)
    assert (r.text, r.finish_reason, r.tokens[-1] in lm.eos_token_ids) == (
        "SELECT name FROM singer WHERE age > 30", "stop", True)


def test_models_with_sliding_window_caches_are_not_batched(lm_random):
    from mlx_lm.models.cache import RotatingKVCache

    class Windowed:
        layers = lm_random.model.layers

        def make_cache(self):
            return [RotatingKVCache(max_size=16) for _ in self.layers]

    from mlx_text2sql.inference.engine.kernels import _supports_batching

    assert _supports_batching(lm_random.model)
    assert not _supports_batching(Windowed())


def test_edge_prompts_chunked_prefill_duplicates_and_single_tokens(lm_random):
    """Prefill in chunks (a prompt longer than prefill_step), duplicate prompts, a one-token
    prompt and raw token ids, mixed in one batch: each still gets mlx_lm's tokens."""
    gen = SQLGenerator(lm_random, prefill_step=16)
    long = build_messages("how many?", "\n".join(SCHEMAS))
    prompts = [long, long, [5], build_messages("who", SCHEMAS[1]), "SELECT name FROM"]
    results = gen.generate(prompts, max_tokens=6, batch_size=5)
    assert results[0].tokens == results[1].tokens
    for p, r in zip(prompts, results):
        assert r.tokens == reference_tokens(lm_random, gen.prompt_tokens(p), 6)


@pytest.mark.parametrize("draft_tokens", [0, 1, 4, 9])
def test_prompt_lookup_drafts_never_change_greedy_output(lm_random, draft_tokens):
    """Verified guesses (right or wrong, in batches with rows of different lengths and
    continuous refills) give exactly mlx_lm's greedy tokens."""
    prompts = prompts_set()
    gen = SQLGenerator(lm_random, draft_tokens=draft_tokens)
    results = gen.generate(prompts, max_tokens=14, batch_size=5, stop=["e"])
    for p, r in zip(prompts, results):
        ref = reference_tokens(lm_random, gen.prompt_tokens(p), 14)
        assert r.tokens == ref[: len(r.tokens)]
    if draft_tokens:
        assert gen.stats.drafted_tokens > 0


def test_right_guesses_save_steps(programmed):
    """A question that quotes the SQL the model writes: prompt lookup guesses the reply's
    tokens, so far fewer steps than tokens are needed, for the same output."""
    lm = load_model(str(programmed))
    prompts = [build_messages(f"Is it SELECT name FROM singer WHERE age > 30 (case {i})?", SCHEMAS[0])
               for i in range(3)]
    plain = SQLGenerator(lm, draft_tokens=0)
    fast = SQLGenerator(lm, draft_tokens=4)
    a = plain.generate(prompts, max_tokens=40, batch_size=3)
    b = fast.generate(prompts, max_tokens=40, batch_size=3)
    assert [r.tokens for r in a] == [r.tokens for r in b]
    assert all(r.text == "SELECT name FROM singer WHERE age > 30" for r in b)
    assert fast.stats.accepted_tokens > 0
    assert fast.stats.decode_steps < plain.stats.decode_steps / 2


def test_lookup_drafts():
    from mlx_text2sql.inference.engine.rows import _Lookup

    lk = _Lookup([1, 2, 3, 4, 5, 2, 3])
    assert lk.draft(3) == [4, 5, 2]  # after the earlier "2 3" came "4 5 2"
    lk.push(9)
    assert lk.draft(2) == []  # 9 never appeared before
    lk.push(2)
    assert lk.draft(2) == [3]  # "9 2" unseen; a one-token match ("2", latest at index 5) guesses one token
    lk.push(3)
    assert lk.draft(4) == [9, 2, 3]  # "2 3" last came before "9 2 3"
    assert _Lookup([]).draft(3) == [] and _Lookup([1, 1, 1]).draft(0) == []


# --------------------------------------------------------------------------- decode attention

@pytest.mark.parametrize("heads, kv_heads, L", [(9, 3, 1), (9, 3, 5), (4, 4, 1), (4, 2, 3)])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool", "additive"])
def test_decode_attention_matches_mlx_fast_sdpa(heads, kv_heads, L, mask_kind):
    from mlx_text2sql.inference.engine import decode_attention

    if mask_kind == "none" and L > 1:
        pytest.skip("several queries always come with a mask")
    rng = np.random.default_rng(heads * 100 + L)
    B, T, D = 3, 17, 8
    q = mx.array(rng.standard_normal((B, heads, L, D)).astype(np.float32))
    k = mx.array(rng.standard_normal((B, kv_heads, T, D)).astype(np.float32))
    v = mx.array(rng.standard_normal((B, kv_heads, T, D)).astype(np.float32))
    allowed = rng.random((B, 1, L, T)) < 0.7
    allowed[..., -1] = True  # every query sees at least itself
    mask = {"none": None, "causal": "causal", "bool": mx.array(allowed),
            "additive": mx.array(np.where(allowed, 0.0, -1e9).astype(np.float32))}[mask_kind]
    ours = decode_attention(q, k, v, 0.125, mask)
    ref = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, mask=mask)
    assert ours.shape == ref.shape == (B, heads, L, D)
    np.testing.assert_allclose(np.array(ours), np.array(ref), atol=1e-5)


def test_attention_wrapper_takes_only_engine_calls(lm_random, monkeypatch):
    import sys

    from mlx_lm.models.cache import KVCache

    from mlx_text2sql.inference.engine import cache, kernels

    SQLGenerator(lm_random)
    module = sys.modules[type(lm_random.model).__module__]
    wrapped = module.scaled_dot_product_attention
    assert wrapped._mlx_text2sql_wrapped and wrapped.__wrapped__ is not wrapped
    SQLGenerator(lm_random)  # wrapped once only
    assert module.scaled_dot_product_attention is wrapped
    seen = []
    monkeypatch.setattr(kernels, "decode_attention", lambda *a: seen.append("ours") or a[0])
    q, kv = mx.zeros((1, 2, 1, 4)), mx.zeros((1, 2, 3, 4))
    wrapped(q, kv, kv, cache=KVCache(), scale=1.0, mask=None)  # mlx_lm's own cache: the original
    batch = cache._Batch(np.ones((1, 3), dtype=bool), np.array([3]))
    wrapped(q, kv, kv, cache=cache._LayerCache(batch), scale=1.0, mask=None)
    wrapped(mx.zeros((1, 2, 9, 4)), kv, kv, cache=cache._LayerCache(batch), scale=1.0, mask="causal")
    assert seen == ["ours"]  # a 9-query prefill block went to the original too


def test_prefill_blocks_project_only_the_last_column(lm_random):
    from mlx_text2sql.inference.engine.kernels import _backbone_and_head

    backbone, head = _backbone_and_head(lm_random.model)
    x = mx.array([[5, 9, 2, 7, 1]])
    np.testing.assert_allclose(np.array(head(backbone(x))), np.array(lm_random.model(x)), atol=1e-5)
    assert _backbone_and_head(object()) is None


# --------------------------------------------------------------------------- host math

ATTENTION_SHAPES = [(9, 3, 1, 17), (9, 3, 5, 17), (4, 2, 17, 17), (4, 4, 30, 41), (2, 1, 3, 3)]


@pytest.mark.parametrize("heads, kv_heads, L, T", ATTENTION_SHAPES)
@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool", "bool-2d", "additive", "additive-f16"])
def test_host_attention_matches_mlx_fast_sdpa(heads, kv_heads, L, T, mask_kind):
    from mlx_text2sql.inference.engine import host_attention

    if mask_kind == "none" and L > 1:
        pytest.skip("several queries always come with a mask")
    rng = np.random.default_rng(heads * 1000 + L * 10 + T)
    B, D = 3, 8
    q = mx.array(rng.standard_normal((B, heads, L, D)).astype(np.float32))
    k = mx.array(rng.standard_normal((B, kv_heads, T, D)).astype(np.float32))
    v = mx.array(rng.standard_normal((B, kv_heads, T, D)).astype(np.float32))
    allowed = rng.random((B, 1, L, T)) < 0.6
    allowed[..., -1] = True  # every query sees at least one column
    additive = np.where(allowed, 0.0, -1e4)
    mask = {"none": None, "causal": "causal", "bool": mx.array(allowed), "bool-2d": mx.array(allowed[0, 0]),
            "additive": mx.array(additive.astype(np.float32)),
            "additive-f16": mx.array(additive.astype(np.float16))}[mask_kind]
    ours = host_attention(q, k, v, 0.3, mask)
    ref = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask=mask)
    assert ours.shape == ref.shape == (B, heads, L, D) and ours.dtype == mx.float32
    np.testing.assert_allclose(np.array(ours), np.array(ref), atol=1e-5)


def test_host_attention_keeps_a_half_precision_models_dtype():
    from mlx_text2sql.inference.engine import host_attention

    rng = np.random.default_rng(3)
    q, k, v = (mx.array(rng.standard_normal((2, 4, 3, 8)).astype(np.float16)) for _ in range(3))
    ours = host_attention(q, k, v, 0.5, "causal")
    ref = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.5, mask="causal")
    assert ours.dtype == mx.float16
    np.testing.assert_allclose(np.array(ours, dtype=np.float32), np.array(ref, dtype=np.float32), atol=2e-2)


def test_host_swiglu_matches_mlx_lms_swiglu_without_warnings():
    import warnings

    from mlx_lm.models.activations import swiglu

    from mlx_text2sql.inference.engine import host_swiglu

    rng = np.random.default_rng(0)
    gate = rng.standard_normal((2, 5, 24)).astype(np.float32) * 4
    gate[0, 0, :4] = [-200.0, -90.0, 90.0, 200.0]  # exp(-gate) overflows, or nearly
    x = rng.standard_normal((2, 24, 5)).astype(np.float32)
    g, xt = mx.array(gate), mx.array(x).swapaxes(1, 2)  # a strided (transposed) operand too
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = host_swiglu(g, xt)
    ref = swiglu(g, xt)
    assert ours.shape == ref.shape and ours.dtype == mx.float32
    np.testing.assert_allclose(np.array(ours), np.array(ref), rtol=1e-5, atol=1e-6)


def test_host_math_runs_only_while_the_engine_generates(lm_random, monkeypatch):
    from mlx_text2sql.inference.engine import kernels

    calls = {"attention": 0, "swiglu": 0}
    real_att, real_swiglu = kernels.host_attention, kernels.host_swiglu

    def att(*a):
        calls["attention"] += 1
        return real_att(*a)

    def swi(*a):
        calls["swiglu"] += 1
        return real_swiglu(*a)

    monkeypatch.setattr(kernels, "host_attention", att)
    monkeypatch.setattr(kernels, "host_swiglu", swi)
    prompts = prompts_set()[:3]
    gen = SQLGenerator(lm_random)
    assert gen.uses_host_math()  # the default on the CPU backend
    n_layers = len(lm_random.model.layers)
    out = gen.generate(prompts, max_tokens=4, batch_size=2)
    assert calls["attention"] >= n_layers and calls["swiglu"] == calls["attention"]
    assert not kernels._HOST_MATH.active

    # mlx_lm's own generation in the same process, and a generator with it off, go untouched.
    before = dict(calls)
    reference_tokens(lm_random, gen.prompt_tokens(prompts[0]), 4)
    off = SQLGenerator(lm_random, host_math=False).generate(prompts, max_tokens=4, batch_size=2)
    assert calls == before
    assert [r.tokens for r in off] == [r.tokens for r in out]

    monkeypatch.setenv("MLX_TEXT2SQL_NO_HOST_MATH", "1")
    assert not SQLGenerator(lm_random).uses_host_math()
    assert SQLGenerator(lm_random, host_math=True).uses_host_math()
    monkeypatch.delenv("MLX_TEXT2SQL_NO_HOST_MATH")

    # An error while generating (here from a stream callback) switches it off again.
    def boom(i, piece):
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        SQLGenerator(lm_random).generate(prompts, max_tokens=4, stream_callback=boom)
    assert not kernels._HOST_MATH.active
