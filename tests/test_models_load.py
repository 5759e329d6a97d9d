"""load_model over folders and GGUF files (dtype / dequantize / quantize), saving model folders that
mlx_lm and transformers read back, and the CPU training default."""

from __future__ import annotations

import json

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

from ggufwriter import write_gguf  # noqa: E402

from mlx_text2sql.errors import ModelError  # noqa: E402
from mlx_text2sql.models import load_model  # noqa: E402
from mlx_text2sql.models.load import default_train_dequantize  # noqa: E402
from mlx_text2sql.models.save import model_quantization, save_model_folder  # noqa: E402

IDS = [[1, 20, 40, 60, 80, 100, 120, 3, 4]]


def out(model):
    return np.array(model(mx.array(IDS)).astype(mx.float32))


@pytest.fixture(scope="module")
def q41_gguf(tmp_path_factory):
    from tinymodels import make_tiny_model

    root = tmp_path_factory.mktemp("load_gguf")
    folder = make_tiny_model(root / "hf", "llama", "chatml", tie=True)
    write_gguf(folder, root / "m.gguf", qtype="Q4_1", embed_qtype="Q8_0")
    return root / "m.gguf"


# --------------------------------------------------------------------------- dtype / quantization

def test_gguf_dtype_and_dequantize(q41_gguf):
    import mlx.nn as nn

    base = load_model(q41_gguf)
    assert base.quantization["bits"] == 4
    dense = load_model(q41_gguf, dequantize=True)
    assert dense.config["torch_dtype"] == "float32"
    assert all(v.dtype == mx.float32 for _, v in _flat(dense.model))
    half = load_model(q41_gguf, dequantize=True, dtype="bfloat16")
    assert all(v.dtype == mx.bfloat16 for _, v in _flat(half.model))
    assert not isinstance(half.model.model.layers[0].mlp.up_proj, nn.QuantizedLinear)
    np.testing.assert_allclose(out(half.model), out(dense.model), atol=0.15)
    # dtype without dequantize casts the float parameters and keeps packed weights
    kept = load_model(q41_gguf, dtype="float32")
    assert kept.quantization == base.quantization
    assert kept.model.model.layers[0].mlp.up_proj.scales.dtype == mx.float32
    assert kept.model.model.layers[0].mlp.up_proj.weight.dtype == mx.uint32
    np.testing.assert_allclose(out(kept.model), out(dense.model), atol=1e-4)


def test_gguf_requantize(q41_gguf):
    with pytest.raises(ModelError, match="already quantized"):
        load_model(q41_gguf, quantize=4)
    re8 = load_model(q41_gguf, dequantize=True, quantize=8, group_size=32)
    assert re8.quantization == {"group_size": 32, "bits": 8}
    assert re8.model.model.layers[1].self_attn.o_proj.bits == 8
    dense = load_model(q41_gguf, dequantize=True)
    np.testing.assert_allclose(out(re8.model), out(dense.model), atol=0.1)


def test_default_train_dequantize(capsys):
    on_cpu = mx.default_device().type == mx.DeviceType.cpu
    assert default_train_dequantize() is on_cpu
    err = capsys.readouterr().err
    assert (err.count("\n") == 1 and "float32" in err) if on_cpu else err == ""
    default_train_dequantize(log_choice=False)
    assert capsys.readouterr().err == ""


def test_memory_warning_before_loading(tiny_llama, monkeypatch, capsys):
    from mlx_text2sql.models import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: (1000, "test limit"))
    lm = load_model(tiny_llama)
    err = capsys.readouterr().err
    assert "warning: loading" in err and "0.0 GB is free (test limit)" in err
    assert lm.model is not None  # a warning, not a refusal
    load_model(tiny_llama, check_mem=False)
    assert "warning" not in capsys.readouterr().err


# --------------------------------------------------------------------------- saving

def _flat(model):
    from mlx.utils import tree_flatten

    return tree_flatten(model.parameters())


def test_save_quantized_gguf_folder_reloads(q41_gguf, tmp_path):
    import mlx_lm

    g = load_model(q41_gguf)
    folder = save_model_folder(g.model, g.tokenizer, g.config, tmp_path / "q")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["quantization"] == {"group_size": 32, "bits": 4,
                                   "model.embed_tokens": {"group_size": 32, "bits": 8}}
    assert cfg["quantization_config"] == cfg["quantization"]
    assert cfg["rope_theta"] == g.config["rope_theta"] and cfg["tie_word_embeddings"] is True
    assert cfg["eos_token_id"] == g.tokenizer._tokenizer.convert_tokens_to_ids("<|im_end|>")
    model, tok = mlx_lm.load(str(folder))
    np.testing.assert_array_equal(out(model), out(g.model))
    assert tok.encode("SELECT a FROM t") == g.tokenizer.encode("SELECT a FROM t")
    assert tok.eos_token_ids == g.tokenizer.eos_token_ids
    msgs = [{"role": "user", "content": "q"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == g.apply_chat_template(msgs)
    again = load_model(folder)  # and through our own loader, template and EOS included
    assert again.eos == g.eos == "<|im_end|>"
    assert again.quantization == g.quantization


def test_save_dense_folder_for_transformers(q41_gguf, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    d = load_model(q41_gguf, dequantize=True)
    folder = save_model_folder(d.model, d.tokenizer, d.config, tmp_path / "dense")
    cfg = json.loads((folder / "config.json").read_text())
    assert "quantization" not in cfg and cfg["torch_dtype"] == "float32"
    hf_cfg = AutoConfig.from_pretrained(folder)
    assert hf_cfg.model_type == "llama" and hf_cfg.num_key_value_heads == d.config["num_key_value_heads"]
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.encode("SELECT 1", add_special_tokens=False) == d.tokenizer.encode("SELECT 1", add_special_tokens=False)
    assert tok.chat_template == d.tokenizer.chat_template


def test_save_shards_and_replaces_old_weights(tiny_llama, tmp_path):
    import mlx_lm

    lm = load_model(tiny_llama)
    folder = tmp_path / "sharded"
    save_model_folder(lm.model, lm.tokenizer, lm.config, folder, max_shard_gb=40_000 / (1 << 30))
    shards = sorted(p.name for p in folder.glob("model*.safetensors"))
    assert len(shards) > 2 and shards[0].endswith(f"-of-{len(shards):05d}.safetensors")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert set(index["weight_map"]) == {k for k, _ in _flat(lm.model)}
    model, _ = mlx_lm.load(str(folder))
    np.testing.assert_array_equal(out(model), out(lm.model))
    # saving again unsharded leaves no stale shard behind
    save_model_folder(lm.model, lm.tokenizer, lm.config, folder)
    assert sorted(p.name for p in folder.glob("model*")) == ["model.safetensors"]
    model, _ = mlx_lm.load(str(folder))
    np.testing.assert_array_equal(out(model), out(lm.model))


def test_save_lifts_rope_parameters(tiny_llama, tmp_path):
    lm = load_model(tiny_llama)
    config = {k: v for k, v in lm.config.items() if k != "rope_theta"}
    config["rope_parameters"] = {"rope_theta": 12345.0, "rope_type": "default"}
    folder = save_model_folder(lm.model, lm.tokenizer, config, tmp_path / "rp")
    assert json.loads((folder / "config.json").read_text())["rope_theta"] == 12345.0
    assert "rope_theta" not in config  # the caller's dict is untouched


def test_model_quantization_of_quantized_folder(tiny_llama):
    lm = load_model(tiny_llama, quantize=4, group_size=32)
    assert model_quantization(lm.model) == {"group_size": 32, "bits": 4}
    assert model_quantization(load_model(tiny_llama).model) is None


def test_save_refuses_a_file(tiny_llama, tmp_path):
    lm = load_model(tiny_llama)
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ModelError, match="is a file"):
        save_model_folder(lm.model, lm.tokenizer, lm.config, target)
