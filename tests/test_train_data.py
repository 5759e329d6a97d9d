"""Training data: the three record forms, answer-only loss masks, the EOS each template ends
its answer with, schema trimming, malformed input, and batching."""

import json

import numpy as np
import pytest

from mlx_text2sql.errors import InputError
from mlx_text2sql.models.load import load_model
from mlx_text2sql.tuner.data import (Encoder, collate, epoch_batches, eval_batches, load_split,
                                     trimmed_schemas)
from trainkit import as_messages, as_prompt_completion, as_text, toy_examples

REC = toy_examples(1, seed=3)[0]


@pytest.fixture(scope="module")
def chatml(tiny_llama):
    return load_model(str(tiny_llama))


def decode(lm, ids):
    return lm.tokenizer.decode(list(map(int, ids)))


@pytest.mark.parametrize("fixture,eos", [("tiny_llama", "<|im_end|>"), ("tiny_tinyllama", "</s>"),
                                         ("tiny_mistral", "</s>"), ("tiny_base", "</s>")])
def test_answer_is_the_sql_and_the_eos_the_model_will_learn(request, fixture, eos):
    lm = load_model(str(request.getfixturevalue(fixture)))
    assert lm.eos == eos
    enc = Encoder(lm.tokenizer, lm.eos)
    sample, status = enc.encode_record(as_messages(REC), "train.jsonl:1")
    assert status == "ok"
    answer = decode(lm, sample.tokens[sample.prompt_len:])
    assert answer == REC["sql"] + eos
    # the EOS is one token, the one generation stops on
    eos_id = int(sample.tokens[-1])
    assert eos_id in lm.eos_token_ids
    # the prompt is exactly what generation feeds the model
    prompt = lm.apply_chat_template(as_messages(REC)["messages"][:-1], add_generation_prompt=True)
    assert decode(lm, sample.tokens[:sample.prompt_len]) == prompt
    # one BOS at most
    bos = lm.tokenizer.bos_token_id
    assert list(sample.tokens).count(bos) <= 1


@pytest.mark.parametrize("form", [as_messages, as_text, as_prompt_completion,
                                  lambda r: as_prompt_completion(r, None)],
                         ids=["messages", "text", "prompt-completion", "prompt-completion-raw"])
def test_all_record_forms_give_the_same_example(chatml, form):
    enc = Encoder(chatml.tokenizer, chatml.eos)
    ref, _ = enc.encode_record(as_messages(REC), "a:1")
    sample, _ = enc.encode_record(form(REC), "a:1")
    assert sample.prompt_len == ref.prompt_len
    assert np.array_equal(sample.tokens, ref.tokens)


def test_text_record_without_sql_trains_on_every_token(chatml):
    enc = Encoder(chatml.tokenizer, chatml.eos)
    sample, status = enc.encode_record({"text": "table: t\nQ: how many?\nA: SELECT 1"}, "a:1")
    assert status == "no_boundary" and sample.prompt_len == 1
    assert decode(chatml, sample.tokens).endswith("SELECT 1<|im_end|>")


def test_loss_mask_covers_exactly_the_answer(chatml):
    enc = Encoder(chatml.tokenizer, chatml.eos)
    samples = [enc.encode_record(as_messages(r), f"a:{i}")[0] for i, r in enumerate(toy_examples(3, seed=5))]
    b = collate(samples, train_on_prompt=False, pad_to=16)
    B, L = b.inputs.shape
    assert L % 16 == 0 and L >= max(len(s.tokens) - 1 for s in samples)
    live = b.weights > 0
    assert len(b.index) % 16 == 0
    assert b.loss_tokens == int(live.sum()) == sum(len(s.tokens) - s.prompt_len for s in samples)
    rows, cols = np.divmod(b.index[live], L)
    for r, s in enumerate(samples):
        mine = cols[rows == r]
        # positions prompt_len-1 .. T-2 predict the answer tokens prompt_len .. T-1, no others
        assert list(mine) == list(range(s.prompt_len - 1, len(s.tokens) - 1))
        assert list(b.targets[live][rows == r]) == list(s.tokens[s.prompt_len:])
        # the inputs at those positions are the real tokens (the prompt's last token first)
        assert np.array_equal(b.inputs[r, : len(s.tokens) - 1], s.tokens[:-1])
        assert (b.inputs[r, len(s.tokens) - 1:] == 0).all()
    assert (b.weights[~live] == 0).all()
    assert b.tokens == sum(len(s.tokens) for s in samples)

    full = collate(samples, train_on_prompt=True)
    assert full.loss_tokens == sum(len(s.tokens) - 1 for s in samples)


def test_overlong_examples_get_a_trimmed_schema_never_a_cut_sql(chatml, tmp_path):
    from mlx_text2sql.example import Column, Table
    from mlx_text2sql.prompts import build_messages, render_schema

    tables = [Table(name=f"t{i}", columns=[Column(f"column_{j}") for j in range(6)],
                    rows=[[f"value {i} {j} {k}" for j in range(6)] for k in range(3)]) for i in range(4)]
    schema = render_schema(tables, sample_rows=3)
    sql = 'SELECT "column_1" FROM "t2" WHERE "column_3" = \'x\''
    rec = {"messages": build_messages("which column?", schema, sql), "question": "which column?",
           "schema": schema, "sql": sql}
    enc = Encoder(chatml.tokenizer, chatml.eos, max_seq_length=10_000)
    full, _ = enc.encode_record(rec, "a:1")

    cands = trimmed_schemas(schema, sql)
    assert "/*" not in cands[0] and cands[0].count("CREATE TABLE") == 4  # rows dropped first
    assert cands[1].count("CREATE TABLE") == 1 and '"t2"' in cands[1] and "/*" in cands[1]

    limit = len(full.tokens) - 1
    enc = Encoder(chatml.tokenizer, chatml.eos, max_seq_length=limit)
    trimmed, status = enc.encode_record(rec, "a:1")
    assert status == "trimmed" and len(trimmed.tokens) <= limit
    assert decode(chatml, trimmed.tokens[trimmed.prompt_len:]) == sql + "<|im_end|>"

    # a question so long that no schema makes the example fit: skipped, counted, named
    long_q = "which column holds the value? " * 30
    hopeless = {"messages": build_messages(long_q, schema, sql), "question": long_q, "schema": schema, "sql": sql}
    enc = Encoder(chatml.tokenizer, chatml.eos, max_seq_length=300)
    assert enc.encode_record(hopeless, "a:1") == (None, "too_long")
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (rec, hopeless, as_messages(REC))) + "\n")
    ds = load_split(path, enc)
    assert (ds.stats.trimmed, len(ds), ds.stats.too_long) == (1, 2, [f"{path}:2"])
    assert all(decode(chatml, s.tokens[s.prompt_len:]).endswith("<|im_end|>") for s in ds.samples)
    assert "1 skipped as too long" in ds.stats.describe("train")


@pytest.mark.parametrize("line,message", [
    ('{"messages": [', "malformed JSON line"),
    ('["a list"]', "expected a JSON object"),
    ('{"id": 3}', "record has none of"),
    ('{"messages": [{"role": "user", "content": "q"}]}', "needs a prompt turn|last message must be"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}',
     "non-empty assistant turn"),
    ('{"prompt": "q", "completion": ""}', "completion non-empty"),
    ('{"question": "q", "schema": "s"}', "non-empty 'sql'"),
])
def test_malformed_lines_name_file_and_line(chatml, tmp_path, line, message):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(as_messages(REC)) + "\n\n" + line + "\n")
    with pytest.raises(InputError, match=message) as e:
        load_split(path, Encoder(chatml.tokenizer, chatml.eos))
    assert str(e.value).startswith(f"{path}:3: ")


def test_epoch_batches_are_reproducible_bucketed_and_complete():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 400, size=103)
    a = epoch_batches(lengths, 4, seed=7, epoch=0)
    assert [x.tolist() for x in a] == [x.tolist() for x in epoch_batches(lengths, 4, seed=7, epoch=0)]
    assert [x.tolist() for x in a] != [x.tolist() for x in epoch_batches(lengths, 4, seed=7, epoch=1)]
    assert all(len(x) == 4 for x in a) and len(a) == 103 // 4
    flat = np.concatenate(a)
    assert len(set(flat.tolist())) == len(flat)  # no example twice in an epoch
    # bucketing: far less padding than random batches
    pad = sum(lengths[x].max() * 4 - lengths[x].sum() for x in a)
    perm = np.random.default_rng(1).permutation(103)[:100].reshape(-1, 4)
    pad_random = sum(lengths[x].max() * 4 - lengths[x].sum() for x in perm)
    assert pad < pad_random / 3


def test_eval_batches_are_fixed_and_spread():
    lengths = np.arange(100)[::-1]
    b = eval_batches(lengths, 4, limit=5)
    assert len(b) == 5 and b[0].tolist() == [99, 98, 97, 96] and b[-1].tolist() == [3, 2, 1, 0]
    assert sum(len(x) for x in eval_batches(lengths, 8, limit=None)) == 100


def test_the_data_code_imports_no_mlx():
    """Tokenizing and batching are NumPy only: a data tool or a peer benchmark can use them
    without loading MLX (importing ``tuner`` itself loads nothing until a LoRA name is used)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; import numpy as np; import mlx_text2sql.tuner.data as d; import mlx_text2sql.tuner as t; "
            "d.collate([d.Sample(np.arange(9, dtype=np.int32), 4)]); "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm')], 'MLX imported'; "
            "t.apply_lora; assert 'mlx.core' in sys.modules")
    root = Path(__file__).resolve().parent.parent
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
