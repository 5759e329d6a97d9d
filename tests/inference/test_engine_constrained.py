"""Schema-constrained decoding in the batched engine: with drafts, batching and shared prefixes
its tokens are those of a plain loop that, at each step, takes the most likely token whose text
keeps the reply viable under the constraint (written here from the constraint's public API and
the tokenizer alone)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.generate import generate_step

from mlx_text2sql.inference.engine import SQLGenerator
from mlx_text2sql.models import load_model
from mlx_text2sql.prompts import build_messages
from mlx_text2sql.sql.constrain import NameConstraint

SCHEMAS = [{"singer": ["name", "age", "country"], "head": ["born_state", "id"]},
           {"team": ["city", "points"]},
           {"t": ["a"]}]
QUESTIONS = ["how many singers?", "what is the name of the oldest singer", "list all", "which state",
             "average points by city", "who", "count"]


def viable(c: NameConstraint, text: str, end: bool) -> bool:
    s = c.start()
    for ch in text:
        s = c.step(s, ch)
        if s is None:
            return False
    return c.can_end(s) if end else True


def reference(lm, prompt_tokens, c: NameConstraint, n: int) -> list[int]:
    """Greedy decoding by mlx_lm's ``generate_step``; at each step the best token (by logit)
    whose decoded reply stays viable, the EOS only where the reply may end."""
    tok = lm.tokenizer
    eos = set(int(t) for t in lm.eos_token_ids)
    out: list[int] = []

    def pick(tokens, logits):
        so_far = tokens.tolist()[len(prompt_tokens):]  # generate_step runs a step ahead of its yields
        order = np.argsort(-np.array(logits[0].astype(mx.float32)), kind="stable")
        for t in order.tolist():
            text = tok.decode(so_far + ([] if t in eos else [t]))
            if viable(c, text, end=t in eos):
                break
        mask = np.full(logits.shape, -np.inf, dtype=np.float32)
        mask[0, t] = 0.0
        return logits + mx.array(mask)

    for t, _ in generate_step(mx.array(prompt_tokens), lm.model, max_tokens=n, logits_processors=[pick]):
        out.append(int(t))
        if int(t) in eos:
            break
    return out


@pytest.fixture(scope="module")
def lm(tiny_llama):
    return load_model(str(tiny_llama))


def cases():
    prompts = [build_messages(q, "CREATE TABLE t (a INT)") for q in QUESTIONS]
    constraints = [NameConstraint(SCHEMAS[i % 3], start_in_query=True) if i != 5 else None
                   for i in range(len(prompts))]
    return prompts, constraints


@pytest.mark.parametrize("draft_tokens, batch_size", [(4, 3), (0, 4), (4, 1)])
def test_batched_constrained_decoding_is_the_reference_loop(lm, draft_tokens, batch_size):
    prompts, constraints = cases()
    gen = SQLGenerator(lm, draft_tokens=draft_tokens, constraint_top_k=10**6)
    got = gen.generate(prompts, max_tokens=24, batch_size=batch_size, constraints=constraints)
    free = gen.generate(prompts, max_tokens=24, batch_size=batch_size)
    for i, (p, c) in enumerate(zip(prompts, constraints)):
        toks = gen.prompt_tokens(p)
        if c is None:  # an unconstrained prompt in the same call decodes as without constraints
            assert got[i].tokens == free[i].tokens
            continue
        assert got[i].tokens == reference(lm, toks, c, 24), i
        assert viable(c, got[i].text, end=got[i].finish_reason == "stop")
    assert gen.stats.constrained_tokens > 0  # the constraint did change choices
    assert gen.stats.constraints_dropped == 0
    assert any(g.tokens != f.tokens for g, f in zip(got, free))


def test_the_unbatched_path_follows_the_same_rule(lm):
    prompts, constraints = cases()
    gen = SQLGenerator(lm, constraint_top_k=10**6)
    gen.batched = False  # as for a model whose cache the engine cannot batch
    got = gen.generate(prompts[:3], max_tokens=16, constraints=constraints[:3])
    for p, c, r in zip(prompts, constraints, got):
        assert r.tokens == reference(lm, gen.prompt_tokens(p), c, 16)


def test_a_constraint_that_allows_none_of_the_likely_tokens_lets_the_row_go(lm):
    """With top-k 1 every refused choice ends the constraint for its row: the reply is then
    the unconstrained one from there on."""
    prompts, constraints = cases()
    gen = SQLGenerator(lm, constraint_top_k=1)
    got = gen.generate(prompts[:3], max_tokens=24, constraints=constraints[:3])
    free = SQLGenerator(lm).generate(prompts[:3], max_tokens=24)
    assert [g.tokens for g in got] == [f.tokens for f in free]
    assert gen.stats.constraints_dropped >= 1 and gen.stats.constrained_tokens == 0


def test_constraints_are_greedy_only_and_one_per_prompt(lm):
    prompts, constraints = cases()
    gen = SQLGenerator(lm)
    with pytest.raises(ValueError, match="greedy"):
        gen.generate(prompts, temp=0.7, constraints=constraints)
    with pytest.raises(ValueError, match="constraints for"):
        gen.generate(prompts, constraints=constraints[:2])


def test_token_pieces_keep_word_boundaries(lm):
    gen = SQLGenerator(lm)
    pieces = gen.token_pieces()
    ids = lm.tokenizer.encode("SELECT name FROM singer", add_special_tokens=False)
    assert "".join(pieces[i] for i in ids) == "SELECT name FROM singer"
