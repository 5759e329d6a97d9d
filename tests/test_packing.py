"""Shared-prefix packing: questions on one schema run their common prompt prefix once per batch,
and every example's loss and gradient stay what they are when it runs alone."""

import json
import random

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_text2sql.example import Column, Table
from mlx_text2sql.models.load import load_model
from mlx_text2sql.prompts import build_messages, render_schema
from mlx_text2sql.tuner.data import (Encoder, collate, collate_packed, load_split, packed_epoch, prefix_groups,
                                     split_pieces)
from mlx_text2sql.tuner.fastops import fast_llama_ops
from mlx_text2sql.tuner.lora import apply_lora
from mlx_text2sql.tuner.trainer import (Callback, TrainArgs, check_packed_loss, make_loss, make_optimizer,
                                        make_packed_loss, train)

_COLS = [["name", "age", "country"], ["city", "points", "coach", "founded"], ["player", "position"],
         ["school", "state", "mascot", "enrollment", "colors"]]
_VALUES = ["Art Long", "Butler", "Guard", "Kansas", "Mike", "United States", "Forward", "Ohio", "12", "1990"]


def grouped_records(n_tables: int, seed: int = 0) -> list[dict]:
    """1-5 questions per table (like WikiSQL's ~3), tables of different sizes; a few records
    without a schema field (prompt-completion) so singletons are mixed in."""
    rng = random.Random(seed)
    out = []
    for t in range(n_tables):
        cols = _COLS[t % len(_COLS)]
        name = f"table_{seed}_{t}"
        table = Table(name=name, columns=[Column(c, "TEXT") for c in cols],
                      rows=[[rng.choice(_VALUES) for _ in cols] for _ in range(rng.randint(0, 3))])
        schema = render_schema([table], sample_rows=3)
        for q in range(rng.randint(1, 5)):
            sel, where = rng.sample(cols, 2)
            value = rng.choice(_VALUES)
            question = f"What is the {sel} when the {where} is {value}?" + " please" * rng.randint(0, 6)
            sql = f"SELECT \"{sel}\" FROM \"{name}\" WHERE \"{where}\" = '{value}'"
            out.append({"messages": build_messages(question, schema, sql), "question": question,
                        "schema": schema, "sql": sql, "table": name})
        if t % 7 == 3:
            out.append({"prompt": f"List every {cols[0]} of {name}.", "completion": f"SELECT \"{cols[0]}\" FROM \"{name}\""})
    return out


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def packed_setup(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("grouped")
    write(folder / "train.jsonl", grouped_records(24, seed=0))
    write(folder / "valid.jsonl", grouped_records(4, seed=1))
    mx.random.seed(0)
    lm = load_model(str(tiny_llama))
    apply_lora(lm.model, rank=4, alpha=8)
    enc = Encoder(lm.tokenizer, lm.eos, 512)
    return lm, load_split(folder / "train.jsonl", enc), folder


def test_prefix_groups_share_exactly_the_common_prompt_prefix(packed_setup):
    _, ds, _ = packed_setup
    groups = prefix_groups(ds.samples)
    seen = sorted(i for g in groups for i in g.members)
    assert seen == list(range(len(ds.samples)))                  # every sample exactly once
    assert any(len(g.members) >= 3 for g in groups)
    assert any(ds.samples[g.members[0]].group is None for g in groups)  # the prompt-completion records
    for g in groups:
        toks = [ds.samples[i].tokens for i in g.members]
        assert all(g.prefix_len < ds.samples[i].prompt_len for i in g.members)
        assert all((t[:g.prefix_len] == toks[0][:g.prefix_len]).all() for t in toks)
        if len(toks) > 1:  # maximal: the next token differs somewhere, or the limit was reached
            limit = min(ds.samples[i].prompt_len for i in g.members) - 1
            assert g.prefix_len == limit or len({int(t[g.prefix_len]) for t in toks}) > 1
        # one schema per group
        assert len({ds.samples[i].group for i in g.members}) == 1


def test_packed_epoch_covers_every_example_once_in_full_batches(packed_setup):
    _, ds, _ = packed_setup
    groups = prefix_groups(ds.samples)
    for bs in (3, 4, 8):
        batches = packed_epoch(groups, ds.lengths, bs, seed=5, epoch=0)
        assert batches == packed_epoch(groups, ds.lengths, bs, seed=5, epoch=0)       # pure function
        assert batches != packed_epoch(groups, ds.lengths, bs, seed=5, epoch=1)
        flat = [i for b in batches for _, m in b for i in m]
        assert all(sum(len(m) for _, m in b) == bs for b in batches)
        assert len(flat) == len(set(flat)) and len(ds.samples) - len(flat) < bs     # only the tail dropped
        prefix_of = {i: g.prefix_len for g in groups for i in g.members}
        assert all(prefix_of[i] == p for b in batches for p, m in b for i in m)
        # within a batch, pieces of one group are not split further than the batch forces
        for b in batches:
            assert sum(len(m) for _, m in b) == bs
        parts = split_pieces(batches[0], 2)
        assert sorted(i for part in parts for _, m in part for i in m) == sorted(i for _, m in batches[0] for i in m)
        assert [sum(len(m) for _, m in part) for part in parts] == [bs - bs // 2, bs // 2]


def test_collate_packed_rebuilds_every_sequence_and_answer(packed_setup):
    _, ds, _ = packed_setup
    groups = prefix_groups(ds.samples)
    pieces = [(g.prefix_len, g.members) for g in groups][:6]
    pb = collate_packed(ds.samples, pieces, pad_to=16)
    G, Lp = pb.prefix_inputs.shape
    R, Ls = pb.seg_inputs.shape
    assert Lp % 16 == 0 and Ls % 16 == 0 and G == len(pieces) and R == sum(len(m) for _, m in pieces)
    r = 0
    n_loss = 0
    for g, (p, members) in enumerate(pieces):
        assert pb.prefix_lens[g] == p
        for i in members:
            s = ds.samples[i]
            seq = np.concatenate([pb.prefix_inputs[g, Lp - p:], pb.seg_inputs[r, :len(s.tokens) - 1 - p]])
            assert (seq == s.tokens[:-1]).all()
            assert pb.group_index[r] == g
            r += 1
            n_loss += len(s.tokens) - s.prompt_len
    assert pb.loss_tokens == n_loss and pb.weights.sum() == n_loss
    assert pb.tokens == sum(len(ds.samples[i].tokens) for _, m in pieces for i in m)
    assert pb.computed < pb.tokens  # the shared prefixes ran once
    # the targets are the answer tokens, in order
    want = np.concatenate([ds.samples[i].tokens[ds.samples[i].prompt_len:] for _, m in pieces for i in m])
    assert (pb.targets[:n_loss] == want).all()
    flat = pb.seg_inputs.reshape(-1)
    # position index predicts target: the token after index is the target (inside the segment)
    nxt = np.concatenate([pb.seg_inputs[:, 1:], np.zeros((R, 1), np.int32)], axis=1).reshape(-1)
    inside = [k for k, ix in enumerate(pb.index[:n_loss]) if (ix + 1) % Ls and nxt[ix] != 0]
    assert inside and all(nxt[pb.index[k]] == pb.targets[k] for k in inside)
    assert flat.size == R * Ls


@pytest.mark.parametrize("fast", [False, True])
def test_packed_loss_and_gradients_equal_the_plain_ones(packed_setup, fast):
    lm, ds, _ = packed_setup
    model = lm.model
    groups = prefix_groups(ds.samples)
    pieces = [(g.prefix_len, g.members) for g in groups if len(g.members) > 1][:4]
    pieces.append(next((g.prefix_len, g.members) for g in groups if len(g.members) == 1))
    pb = collate_packed(ds.samples, pieces)
    b = collate([ds.samples[i] for _, m in pieces for i in m])
    plain, packed = make_loss(model, fast=fast), make_packed_loss(model, fast=fast)
    assert packed is not None
    with fast_llama_ops(model, fast):
        (l1, n1), g1 = nn.value_and_grad(model, plain)(model, *(mx.array(x) for x in (b.inputs, b.index, b.targets, b.weights)))
        (l2, n2), g2 = nn.value_and_grad(model, packed)(model, *(mx.array(x) for x in pb.arrays()))
        mx.eval(l1, l2, g1, g2)
    assert n1.item() == n2.item() == pb.loss_tokens
    assert abs(l1.item() - l2.item()) <= 1e-4 * abs(l1.item())
    f1, f2 = dict(tree_flatten(g1)), dict(tree_flatten(g2))
    assert f1.keys() == f2.keys() and len(f1) > 0
    for k in f1:
        assert mx.allclose(f1[k], f2[k], rtol=1e-3, atol=1e-5).item(), k
    with fast_llama_ops(model, fast):
        assert check_packed_loss(model, plain, packed, [ds.samples[i] for i in pieces[0][1]]) < 1e-5


class _Info(Callback):
    def __init__(self):
        self.start = None

    def on_start(self, info):
        self.start = info


def test_training_with_shared_prefixes_learns_like_plain_training(packed_setup, tiny_llama, tmp_path):
    """Same data, same steps: packing is used (fewer tokens computed than counted), the loss
    falls, and the per-step losses track the plain trainer's (different batch order, same task)."""
    _, _, folder = packed_setup
    results = {}
    for share in (True, False):
        mx.random.seed(0)
        lm = load_model(str(tiny_llama))
        apply_lora(lm.model, rank=4, alpha=8)
        enc = Encoder(lm.tokenizer, lm.eos, 512)
        ds = load_split(folder / "train.jsonl", enc)
        info = _Info()
        opt = make_optimizer("adamw", 2e-2, schedule="cosine", warmup=2, total=20)
        r = train(lm.model, opt, ds, TrainArgs(iters=20, batch_size=8, report_every=5, save_every=100,
                                               adapter_path=str(tmp_path / f"ad{share}"), share_prefix=share),
                  loss=make_loss(lm.model), callbacks=[info])
        results[share] = (info.start, [h for h in r.history if h["type"] == "train"])
    start, hist = results[True]
    assert start["shared_prefix"] is True and start["streams"] == 1
    assert results[False][0]["shared_prefix"] is False
    assert all(h["computed_tokens_per_second"] < h["tokens_per_second"] for h in hist)
    losses = [h["loss"] for h in hist]
    plain = [h["loss"] for h in results[False][1]]
    assert losses[-1] < losses[0] - 0.5 and plain[-1] < plain[0] - 0.5
    assert abs(losses[-1] - plain[-1]) < 0.5 * max(plain[0] - plain[-1], 0.1)
