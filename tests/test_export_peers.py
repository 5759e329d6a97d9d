"""Exports checked by the tools that consume them, run in the peers' Python (torch + PEFT +
llama-cpp-python, built by benchmarks/setup_peers.sh; skipped with the reason where it is
absent): PEFT's own loader gives our logits, llama.cpp gives our logits and greedy tokens; on
the real SmolLM2 mlx_lm, PEFT and llama.cpp generate our greedy tokens.

All are marked slow (starting torch or llama.cpp in a second process takes a while on two
cores): ``python -m pytest -m slow tests/test_export_peers.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from exportkit import greedy, logits, make_adapter, peer_has, peers_python, probe_ids, probe_messages, run_peer, tiny_gguf
from mlx_text2sql import export
from mlx_text2sql.tuner.lora import load_with_adapter

PEFT_SCRIPT = r"""
import json, sys
import numpy as np, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
p = json.load(sys.stdin)
tok = AutoTokenizer.from_pretrained(p["base"])
text = tok.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True)
model = AutoModelForCausalLM.from_pretrained(p["base"], dtype=torch.float32)
model = PeftModel.from_pretrained(model, p["adapter"]).eval()
ids = torch.tensor([p["ids"]])
out = {"text": text, "prompts": []}
with torch.no_grad():
    np.save(p["logits"], model(ids).logits[0].float().numpy())
    for prompt in p.get("greedy", []):
        x = torch.tensor([prompt])
        g = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=p["n"], do_sample=False,
                           eos_token_id=p["eos"], pad_token_id=p["eos"][0])
        out["prompts"].append(g[0, len(prompt):].tolist())
print(json.dumps(out))
"""

LLAMA_SCRIPT = r"""
import json, sys
import numpy as np
from llama_cpp import Llama
p = json.load(sys.stdin)
llm = Llama(model_path=p["gguf"], lora_path=p.get("lora"), n_ctx=p.get("n_ctx", 1024), logits_all=True,
            type_k=0, type_v=0, flash_attn=False,  # float32 KV cache (the default is float16)
            verbose=False, seed=0, n_threads=2)
out = {"tokens": llm.tokenize(p["text"].encode(), add_bos=True, special=True), "prompts": []}  # BOS as the GGUF says
llm.reset(); llm.eval(p["ids"])
np.save(p["logits"], np.array(llm.scores[:len(p["ids"])], dtype=np.float32))
for prompt in p.get("greedy", []):
    llm.reset()
    got = []
    for t in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        got.append(int(t))
        if t in p["eos"] or len(got) >= p["n"]:
            break
    out["prompts"].append(got)
print(json.dumps(out))
"""


def _peer(*modules):
    exe, why = peers_python()
    if exe is None:
        pytest.skip(why)
    why = peer_has(exe, *modules)
    if why:
        pytest.skip(why)
    return exe


def _export(adapter, fmt, out, *extra):
    code = export.main(["--adapter-path", str(adapter), "--to", fmt, "--out", str(out), *extra])
    assert code == 0


@pytest.mark.slow
@pytest.mark.parametrize("dora", [False, True])
def test_peft_loader_gives_our_logits(tmp_path, tiny_llama, dora):
    exe = _peer("torch", "peft", "transformers")
    gguf = tiny_gguf(tiny_llama, tmp_path / "tiny.gguf")
    adapter = make_adapter(gguf, tmp_path / "adapter", dequantize=True, dora=dora)
    _export(adapter, "peft", tmp_path / "peft")
    ours = load_with_adapter(adapter)
    ids = probe_ids(ours)
    res = run_peer(exe, PEFT_SCRIPT, {"base": str(tmp_path / "peft" / "base"), "adapter": str(tmp_path / "peft"),
                                      "messages": probe_messages(), "ids": ids, "logits": str(tmp_path / "l.npy")})
    assert res["text"] == ours.apply_chat_template(probe_messages(), add_generation_prompt=True)
    theirs, want = np.load(tmp_path / "l.npy"), logits(ours.model, ids)
    print(f"PEFT vs ours ({'DoRA' if dora else 'LoRA'}): logits max abs diff {np.abs(theirs - want).max():.2e} "
          f"(largest logit {np.abs(want).max():.2f})")
    np.testing.assert_allclose(theirs, want, atol=2e-4, rtol=1e-4)  # float32, another summation order


@pytest.mark.slow
def test_llama_cpp_gives_our_logits_and_greedy_tokens(tmp_path, tiny_llama):
    exe = _peer("llama_cpp")
    adapter = make_adapter(tiny_llama, tmp_path / "adapter")
    _export(adapter, "gguf", tmp_path / "gguf", "--gguf-dtype", "f32")
    ours = load_with_adapter(adapter)
    ids = probe_ids(ours)
    text = ours.apply_chat_template(probe_messages(), add_generation_prompt=True)
    res = run_peer(exe, LLAMA_SCRIPT, {"gguf": str(tmp_path / "gguf" / "model-f32.gguf"), "text": text, "ids": ids,
                                       "logits": str(tmp_path / "l.npy"), "greedy": [ids], "n": 24, "eos": []})
    assert res["tokens"] == ids
    theirs, want = np.load(tmp_path / "l.npy"), logits(ours.model, ids)
    print(f"llama.cpp vs ours: logits max abs diff {np.abs(theirs - want).max():.2e} "
          f"(largest logit {np.abs(want).max():.2f})")
    np.testing.assert_allclose(theirs, want, atol=1e-3, rtol=1e-3)  # llama.cpp's own kernels
    assert res["prompts"][0] == greedy(ours.model, ids, 24)


@pytest.mark.slow
def test_llama_cpp_applies_the_lora_gguf_to_the_base_gguf_with_our_logits(tmp_path, tiny_llama):
    exe = _peer("llama_cpp")
    base = tiny_gguf(tiny_llama, tmp_path / "tiny-f32.gguf", qtype=None, embed_qtype=None)
    adapter = make_adapter(base, tmp_path / "adapter")
    _export(adapter, "gguf-lora", tmp_path / "lora", "--gguf-dtype", "f32")
    ours = load_with_adapter(adapter)
    ids = probe_ids(ours)
    res = run_peer(exe, LLAMA_SCRIPT, {"gguf": str(base), "lora": str(tmp_path / "lora" / "lora-f32.gguf"),
                                       "text": "", "ids": ids, "logits": str(tmp_path / "l.npy"),
                                       "greedy": [ids], "n": 24, "eos": []})
    theirs, want = np.load(tmp_path / "l.npy"), logits(ours.model, ids)
    print(f"llama.cpp base + LoRA GGUF vs ours: logits max abs diff {np.abs(theirs - want).max():.2e} "
          f"(largest logit {np.abs(want).max():.2f})")
    assert np.abs(want - logits(load_with_adapter(None, model=str(base)).model, ids)).max() > 1e-2
    np.testing.assert_allclose(theirs, want, atol=1e-3, rtol=1e-3)
    assert res["prompts"][0] == greedy(ours.model, ids, 24)


# --------------------------------------------------------------------------- real model (slow)

REAL_ADAPTER_ENV = "MLX_TEXT2SQL_EXPORT_ADAPTER"
N_PROMPTS, N_TOKENS = 4, 40


@pytest.fixture(scope="module")
def real_adapter(tmp_path_factory):
    """An adapter on the built-in SmolLM2 ($MLX_TEXT2SQL_EXPORT_ADAPTER, or trained here for 4 steps)."""
    given = os.environ.get(REAL_ADAPTER_ENV)
    if given:
        return Path(given)
    from mlx_text2sql import train

    out = tmp_path_factory.mktemp("real") / "adapter"
    data = Path(__file__).resolve().parents[1] / "data"
    assert train.main(["--iters", "4", "--batch-size", "2", "--lr", "1e-3", "--data", str(data),
                       "--adapter-path", str(out), "--no-plot", "--quiet"]) == 0
    return out


def _real_prompts(lm):
    from mlx_text2sql.engine import SQLGenerator
    from mlx_text2sql.jsonl import read_jsonl
    from mlx_text2sql.prompts import record_messages

    data = Path(__file__).resolve().parents[1] / "data" / "test.jsonl"
    gen = SQLGenerator(lm)
    msgs = [record_messages(r) for r in read_jsonl(data)[:N_PROMPTS]]
    results = gen.generate(msgs, max_tokens=N_TOKENS)
    return [gen.prompt_tokens(m) for m in msgs], [r.tokens for r in results], sorted(gen.eos_ids)


def _report(name, want, got):
    same = sum(w == g for w, g in zip(want, got))
    print(f"{name}: {same}/{len(want)} prompts with identical greedy tokens "
          f"({sum(len(w) for w in want)} tokens ours)")
    assert got == want


@pytest.mark.slow
def test_real_smollm2_mlx_lm_greedy_tokens_equal_ours(tmp_path, real_adapter):
    from mlx_lm import load as mlx_load

    _export(real_adapter, "mlx-lm", tmp_path / "mlx")
    ours = load_with_adapter(real_adapter)
    prompts, want, eos = _real_prompts(ours)
    from mlx_lm import stream_generate

    model, tok = mlx_load(str(tmp_path / "mlx" / "base"), adapter_path=str(tmp_path / "mlx"))
    got = []
    for p in prompts:  # mlx_lm's own decoding loop (KV cache, greedy sampler by default)
        toks = []
        for r in stream_generate(model, tok, prompt=p, max_tokens=N_TOKENS):
            toks.append(int(r.token))
            if r.token in eos:
                break
        got.append(toks)
    _report("mlx_lm", want, got)


@pytest.mark.slow
def test_real_smollm2_peft_greedy_tokens_equal_ours(tmp_path, real_adapter):
    exe = _peer("torch", "peft", "transformers")
    _export(real_adapter, "peft", tmp_path / "peft")
    ours = load_with_adapter(real_adapter)
    prompts, want, eos = _real_prompts(ours)
    res = run_peer(exe, PEFT_SCRIPT, {"base": str(tmp_path / "peft" / "base"), "adapter": str(tmp_path / "peft"),
                                      "messages": probe_messages(), "ids": prompts[0], "logits": str(tmp_path / "l.npy"),
                                      "greedy": prompts, "n": N_TOKENS, "eos": eos})
    print(f"PEFT vs ours (SmolLM2): logits max abs diff "
          f"{np.abs(np.load(tmp_path / 'l.npy') - logits(ours.model, prompts[0])).max():.2e}")
    _report("PEFT", want, res["prompts"])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["f32"])
def test_real_smollm2_llama_cpp_greedy_tokens_equal_ours(tmp_path, real_adapter, dtype):
    exe = _peer("llama_cpp")
    _export(real_adapter, "gguf", tmp_path / "gguf", "--gguf-dtype", dtype)
    ours = load_with_adapter(real_adapter)
    prompts, want, eos = _real_prompts(ours)
    text = ours.apply_chat_template(record_first(), add_generation_prompt=True)
    res = run_peer(exe, LLAMA_SCRIPT, {"gguf": str(tmp_path / "gguf" / f"model-{dtype}.gguf"), "text": text,
                                       "ids": prompts[0], "logits": str(tmp_path / "l.npy"), "greedy": prompts,
                                       "n": N_TOKENS, "eos": eos, "n_ctx": 2048})
    assert res["tokens"] == prompts[0]  # llama.cpp tokenizes the training prompt as we do
    print(f"llama.cpp {dtype} vs ours (SmolLM2): logits max abs diff "
          f"{np.abs(np.load(tmp_path / 'l.npy') - logits(ours.model, prompts[0])).max():.2e}")
    _report(f"llama.cpp {dtype}", want, res["prompts"])


def record_first():
    from mlx_text2sql.jsonl import read_jsonl
    from mlx_text2sql.prompts import record_messages

    return record_messages(read_jsonl(Path(__file__).resolve().parents[1] / "data" / "test.jsonl")[0])
