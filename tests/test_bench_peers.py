"""The benchmark peers (benchmarks/peers): PyTorch + PEFT training and llama.cpp generation.

The peers must see exactly what our code sees, or the speed comparison means nothing: the same
token sequences and loss positions for training, the same prompt token ids for generation. Those
are checked here on tiny random models; tests that run torch or llama.cpp skip where
``bash benchmarks/setup_peers.sh`` has not installed them. Real-model checks are marked slow.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "benchmarks" / "peers"
sys.path.insert(0, str(ROOT))

from benchmarks.peers import llamacpp_generate as LG  # noqa: E402
from benchmarks.peers import peft_train as PT  # noqa: E402

HAS_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("peft") is not None
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch + peft not installed (benchmarks/setup_peers.sh)")
needs_llama_cpp = pytest.mark.skipif(not HAS_LLAMA_CPP,
                                     reason="llama-cpp-python not installed (benchmarks/setup_peers.sh)")


def run_script(name: str, *args: str, timeout: int = 240) -> dict:
    # One thread: with two OpenMP threads on a busy 2-core machine every barrier spins while the
    # other thread waits for a core, and a tiny model's step takes seconds instead of 40 ms.
    if "--check-logits" not in args:
        args = (*args, "--threads", "1")
    done = subprocess.run([sys.executable, str(PEERS / name), *args, "--json"],
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    from trainkit import write_dataset

    return write_dataset(tmp_path_factory.mktemp("peer_data"), n_train=24, n_valid=4)


# --------------------------------------------------------------------------- no peer needed

@pytest.mark.parametrize("script", ["peft_train.py", "llamacpp_generate.py"])
def test_help_runs_without_the_peer_installed(script):
    done = subprocess.run([sys.executable, str(PEERS / script), "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "--json" in done.stdout and "--threads" in done.stdout


@pytest.mark.parametrize("max_len", [1024, 120, 60])
def test_peer_tokenization_is_our_trainers(tiny_llama, toy_data, max_len):
    """Same tokens, same answer boundary, same trims and skips as our trainer's data pipeline,
    though the peer gets a plain transformers tokenizer instead of mlx_lm's wrapper."""
    from transformers import AutoTokenizer

    from mlx_text2sql.models import load_model
    from mlx_text2sql.tuner.data import Encoder, load_split

    lm = load_model(str(tiny_llama))
    ours = load_split(toy_data / "train.jsonl", Encoder(lm.tokenizer, lm.eos, max_seq_length=max_len))
    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    assert PT.turn_eos(tok) == lm.eos == "<|im_end|>"
    peer = PT.load_samples(tok, toy_data / "train.jsonl", max_len)
    assert [s.tokens.tolist() for s in peer.samples] == [s.tokens.tolist() for s in ours.samples]
    assert [s.prompt_len for s in peer.samples] == [s.prompt_len for s in ours.samples]
    assert (peer.stats.trimmed, peer.stats.too_long) == (ours.stats.trimmed, ours.stats.too_long)
    if max_len == 60:  # short enough that some examples are trimmed or dropped
        assert peer.stats.trimmed or peer.stats.too_long


def test_batch_orders():
    lengths = np.array([5, 9, 3, 7, 1, 8, 2, 6, 4, 10, 11])
    from mlx_text2sql.tuner.data import epoch_batches

    bucketed = PT.batch_order(lengths, 4, seed=3, epoch=1, order="bucketed")
    assert bucketed == [b.tolist() for b in epoch_batches(lengths, 4, 3, 1)]
    assert PT.batch_order(lengths, 4, 0, 0, "file") == [[0, 1, 2, 3], [4, 5, 6, 7]]
    shuffled = PT.batch_order(lengths, 4, 0, 0, "shuffle")
    assert shuffled == PT.batch_order(lengths, 4, 0, 0, "shuffle")  # seeded
    assert shuffled != PT.batch_order(lengths, 4, 0, 1, "shuffle")  # reshuffled each epoch
    flat = sum(shuffled, [])
    assert len(shuffled) == 2 and all(len(b) == 4 for b in shuffled) and len(set(flat)) == 8


TEMPLATES = {
    # The registry's templates, and one in the style of SmolLM2's own (loop.first, an implied
    # system turn, block tags on their own lines: trim_blocks/lstrip_blocks change the output).
    "smollm2_style": (
        "{% for message in messages %}\n"
        "    {% if loop.first and messages[0]['role'] != 'system' %}\n"
        "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM<|im_end|>\n' }}\n"
        "    {% endif %}\n"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}\n{{ '<|im_start|>assistant\n' }}\n{% endif %}"
    ),
    "raises": "{% if messages[0]['role'] == 'tool' %}{{ raise_exception('no tools') }}{% endif %}"
              "{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'] | tojson }}\n{% endfor %}",
}


@pytest.mark.parametrize("name", ["chatml", "zephyr", "mistral", "llama2", "smollm2_style", "raises"])
@pytest.mark.parametrize("system", [True, False])
def test_peer_renders_templates_as_transformers_does(name, system):
    from tinymodels import make_tokenizer

    from mlx_text2sql.prompts import CHAT_TEMPLATES, build_messages

    template = TEMPLATES.get(name) or CHAT_TEMPLATES[name].jinja
    tok = make_tokenizer()
    tok.chat_template = template
    msgs = build_messages('how many "heads" > 5?', "CREATE TABLE head (age INT);\n  /* rows */",
                          system="Be brief." if system else None)
    want = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert LG.render(template, msgs, tok.bos_token, tok.eos_token) == want


def test_turn_end_is_read_off_the_template():
    from mlx_text2sql.prompts import CHAT_TEMPLATES

    assert LG.turn_end(CHAT_TEMPLATES["chatml"].jinja, "<s>", "</s>") == "<|im_end|>"
    assert LG.turn_end(CHAT_TEMPLATES["zephyr"].jinja, "<s>", "</s>") == "</s>"
    assert LG.turn_end(TEMPLATES["smollm2_style"], "<s>", "</s>") == "<|im_end|>"


# --------------------------------------------------------------------------- PyTorch + PEFT

@needs_torch
def test_collate_puts_loss_on_answer_tokens_only():
    from mlx_text2sql.tuner.data import Sample

    a = Sample(np.array([1, 2, 3, 4, 5], dtype=np.int32), prompt_len=3)
    b = Sample(np.array([6, 7, 8], dtype=np.int32), prompt_len=1)
    ids, mask, labels = PT.collate([a, b], pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert labels.tolist() == [[-100, -100, -100, 4, 5], [-100, 7, 8, -100, -100]]


@needs_torch
def test_peft_train_run(tiny_llama, toy_data):
    """A short run: exact LoRA size, token counts of exactly the batches our trainer would draw."""
    from transformers import AutoTokenizer

    res = run_script("peft_train.py", "--model-dir", str(tiny_llama), "--data", str(toy_data / "train.jsonl"),
                     "--steps", "3", "--warmup-steps", "2", "--batch-size", "4", "--lr", "1e-2")
    # rank 8 on 7 projections per block: q 64->64, k 64->32, v 64->32, o 64->64, gate/up 64->128,
    # down 128->64; A is (8, in) and B is (out, 8): 8 * (in + out) each, 2 blocks.
    per_block = 8 * ((64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 128) * 2 + (128 + 64))
    assert res["trainable_params"] == 2 * per_block
    assert len(res["losses"]) == 5 and all(np.isfinite(res["losses"]))
    assert res["examples"] == 12 and len(res["step_seconds"]) == 3
    assert res["effective_tokens_per_s"] == pytest.approx(res["tokens"] / res["seconds"])

    data = PT.load_samples(AutoTokenizer.from_pretrained(str(tiny_llama)), toy_data / "train.jsonl", 256)
    order = PT.batch_order(data.lengths, 4, 0, 0, "bucketed")
    timed = order[2:5]
    assert res["tokens"] == sum(len(data.samples[i].tokens) for b in timed for i in b)
    assert res["padded_tokens"] == sum(4 * max(len(data.samples[i].tokens) for i in b) for b in timed)
    assert res["padded_tokens"] >= res["tokens"]
    assert res["peak_rss_bytes"] > 10 * 2**20 and len(res["loadavg"]) == 3
    assert res["torch"] and res["peft"]


@needs_torch
def test_peft_loss_falls(tiny_llama, toy_data):
    """It really trains: a high learning rate on a small set lowers the answer loss."""
    res = run_script("peft_train.py", "--model-dir", str(tiny_llama), "--data", str(toy_data / "train.jsonl"),
                     "--steps", "24", "--warmup-steps", "0", "--lr", "2e-2", "--order", "file")
    first, last = np.mean(res["losses"][:6]), np.mean(res["losses"][-6:])
    assert last < 0.8 * first, res["losses"]


@needs_torch
def test_torch_logits_match_mlx(tiny_llama, toy_data):
    res = run_script("peft_train.py", "--model-dir", str(tiny_llama), "--data", str(toy_data / "valid.jsonl"),
                     "--check-logits")
    assert res["ok"] and res["max_abs_diff"] < 1e-4 and res["argmax_agreement"] == 1.0


# --------------------------------------------------------------------------- llama.cpp

@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama, tmp_path_factory):
    from mlx_text2sql.models import load_model
    from mlx_text2sql.models.gguf import export_gguf

    lm = load_model(str(tiny_llama))
    return export_gguf(lm.model, lm.tokenizer, lm.config, tmp_path_factory.mktemp("gguf") / "tiny.gguf",
                       dtype="f32"), lm


@needs_llama_cpp
def test_llamacpp_sees_our_prompt_ids_and_decodes_greedily(tiny_gguf, toy_data):
    import mlx.core as mx

    from mlx_text2sql.engine import SQLGenerator
    from mlx_text2sql.jsonl import read_jsonl
    from mlx_text2sql.prompts import record_messages

    path, lm = tiny_gguf
    res = run_script("llamacpp_generate.py", "--gguf", str(path), "--data", str(toy_data / "valid.jsonl"),
                     "--limit", "3", "--max-tokens", "6", "--prompt-ids")
    records = read_jsonl(toy_data / "valid.jsonl")[:3]
    engine = SQLGenerator(lm)
    ours = [engine.prompt_tokens(record_messages(r)) for r in records]
    assert res["prompt_ids"] == ours
    assert res["prompt_tokens"] == [len(p) for p in ours] and res["stop"] == ["<|im_end|>"]
    assert res["queries"] == 3 and len(res["outputs"]) == 3 and all(n <= 6 for n in res["generated_tokens"])
    assert res["queries_per_s"] == pytest.approx(3 / res["seconds"])
    assert res["prefill_tokens_per_s"] > 0 and res["decode_tokens_per_s"] > 0
    # Greedy decoding of the same f32 weights: MLX's argmax continuation, as text (llama-cpp-python
    # drops the bytes of an incomplete UTF-8 character where the tokenizer writes U+FFFD).
    for ids, reply, n in zip(ours, res["replies"], res["generated_tokens"]):
        tokens, new = list(ids), []
        for _ in range(n):
            nxt = int(mx.argmax(lm.model(mx.array([tokens]))[0, -1]))
            if nxt in lm.eos_token_ids:
                break
            tokens.append(nxt)
            new.append(nxt)
        assert lm.tokenizer.decode(new).replace("\ufffd", "") == reply


# --------------------------------------------------------------------------- real model (slow)

@pytest.mark.slow
@needs_torch
def test_smollm2_export_loads_in_transformers_with_mlx_logits(tmp_path):
    model_dir = tmp_path / "smollm2-f32"
    done = subprocess.run([sys.executable, str(PEERS / "peft_train.py"), "--model-dir", str(model_dir),
                           "--export-model"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    res = run_script("peft_train.py", "--model-dir", str(model_dir), "--data", str(ROOT / "data" / "test.jsonl"),
                     "--check-logits", timeout=600)
    assert res["ok"] and res["argmax_agreement"] == 1.0


@pytest.mark.slow
@needs_llama_cpp
def test_llamacpp_prompt_ids_on_the_real_gguf():
    from mlx_text2sql.engine import SQLGenerator
    from mlx_text2sql.jsonl import read_jsonl
    from mlx_text2sql.models import load_model
    from mlx_text2sql.prompts import record_messages

    res = run_script("llamacpp_generate.py", "--data", str(ROOT / "data" / "test.jsonl"), "--limit", "4",
                     "--max-tokens", "4", "--prompt-ids", "--warmup", "0")
    engine = SQLGenerator(load_model("smollm2-135m"))
    records = read_jsonl(ROOT / "data" / "test.jsonl")[:4]
    assert res["prompt_ids"] == [engine.prompt_tokens(record_messages(r)) for r in records]
