"""LoRA/DoRA/QLoRA adapters: exact parameter counts, save/read/load round trips (ours and
mlx_lm's format), mismatch errors, and fuse parity (dense and quantized)."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_text2sql.errors import AdapterError, ConfigError
from mlx_text2sql.models.load import load_model
from mlx_text2sql.tuner.lora import (adapter_weights, apply_lora, fuse_lora, load_adapter,
                                     load_with_adapter, lora_layers, read_adapter_config,
                                     save_adapter)

# The tiny llama of tinymodels.py: hidden 64, 4 heads of 16 (so q/o: 64 -> 64), 2 kv heads
# (k/v: 64 -> 32), intermediate 128 (gate/up: 64 -> 128, down: 128 -> 64), 2 blocks.
DIMS = {"q_proj": (64, 64), "k_proj": (64, 32), "v_proj": (64, 32), "o_proj": (64, 64),
        "gate_proj": (64, 128), "up_proj": (64, 128), "down_proj": (128, 64)}
TOKENS = mx.array([[1, 5, 9, 33, 70, 2, 11, 40, 41, 300]], dtype=mx.int32)


def lora_count(rank, names, blocks=2):
    """LoRA adds A (in x r) and B (r x out) per wrapped layer."""
    return blocks * sum(rank * (DIMS[n][0] + DIMS[n][1]) for n in names)


def fresh(path, **kw):
    return load_model(str(path), **kw)


def randomize(model, seed=1, std=0.05):
    """Give every adapter tensor (B included) non-zero values, as after training."""
    mx.random.seed(seed)
    for name, layer in lora_layers(model):
        layer.lora_b = mx.random.normal(layer.lora_b.shape) * std
    mx.eval(model.parameters())


@pytest.mark.parametrize("rank,targets,num_layers,expected", [
    (8, None, None, lora_count(8, DIMS)),                       # 8 * 1024 * 2 = 16384
    (4, ["q_proj", "v_proj"], None, lora_count(4, ["q_proj", "v_proj"])),
    (4, ["self_attn.q_proj", "v_proj"], 1, lora_count(4, ["q_proj", "v_proj"], blocks=1)),
    (16, ["down_proj"], 2, lora_count(16, ["down_proj"])),
])
def test_exact_trainable_parameter_counts(tiny_llama, rank, targets, num_layers, expected):
    lm = fresh(tiny_llama)
    n = apply_lora(lm.model, rank=rank, alpha=2 * rank, targets=targets, num_layers=num_layers)
    assert n == expected
    assert sum(v.size for _, v in tree_flatten(lm.model.trainable_parameters())) == expected


def test_dora_adds_one_magnitude_per_output(tiny_llama):
    lm = fresh(tiny_llama)
    n = apply_lora(lm.model, rank=8, dora=True)
    outputs = sum(out for _, out in DIMS.values())  # 512 per block
    assert n == lora_count(8, DIMS) + 2 * outputs == 17408


def test_lm_head_target_outside_blocks(tiny_llama):
    lm = fresh(tiny_llama)
    vocab = lm.config["vocab_size"]
    n = apply_lora(lm.model, rank=2, targets=["q_proj", "lm_head"])
    assert n == lora_count(2, ["q_proj"]) + 2 * (64 + vocab)


def test_qlora_wraps_quantized_layers_with_the_same_count(tiny_llama):
    lm = fresh(tiny_llama, quantize=4, group_size=32)
    assert isinstance(lm.model.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    assert apply_lora(lm.model, rank=8) == lora_count(8, DIMS)
    assert isinstance(lm.model.model.layers[0].self_attn.q_proj.linear, nn.QuantizedLinear)


def test_bad_settings_listed_together(tiny_llama):
    lm = fresh(tiny_llama)
    with pytest.raises(ConfigError) as e:
        apply_lora(lm.model, rank=0, alpha=-1, dropout=1.5, num_layers=5)
    assert len(e.value.problems) == 4
    with pytest.raises(ConfigError, match="no_such_proj.*self_attn.q_proj"):
        apply_lora(fresh(tiny_llama).model, targets=["no_such_proj"])


def test_zero_init_keeps_the_base_output(tiny_llama):
    lm = fresh(tiny_llama)
    before = lm.model(TOKENS)
    apply_lora(lm.model, rank=8)
    assert mx.array_equal(before, lm.model(TOKENS)).item()
    with pytest.raises(AdapterError, match="already has LoRA"):
        apply_lora(lm.model)


def test_save_load_round_trip_and_names(tiny_llama, tmp_path):
    lm = fresh(tiny_llama, dtype="float32")
    apply_lora(lm.model, rank=4, alpha=8, targets=["q_proj", "down_proj"], num_layers=1)
    randomize(lm.model)
    ref = lm.model(TOKENS)
    save_adapter(lm.model, tmp_path / "ad", {"base_model": str(tiny_llama), "dtype": "float32"})
    names = set(np.load(tmp_path / "ad" / "adapters.npz").files)
    assert names == {"model.layers.1.self_attn.q_proj.lora_a", "model.layers.1.self_attn.q_proj.lora_b",
                     "model.layers.1.mlp.down_proj.lora_a", "model.layers.1.mlp.down_proj.lora_b"}
    assert not list((tmp_path / "ad").glob(".*"))  # no temp files left behind
    cfg = read_adapter_config(tmp_path / "ad")
    assert cfg["lora"] == {"rank": 4, "alpha": 8.0, "scale": 2.0, "dropout": 0.0,
                           "targets": ["mlp.down_proj", "self_attn.q_proj"], "num_layers": 1, "dora": False}
    assert cfg["base_model"] == str(tiny_llama) and cfg["dtype"] == "float32"

    again = load_with_adapter(tmp_path / "ad")  # base model, dtype: from the config
    assert again.adapter["lora"]["rank"] == 4
    assert mx.allclose(ref, again.model(TOKENS), atol=1e-6).item()
    assert not again.model.training


def test_reads_mlx_lm_adapter_folders(tiny_llama, tmp_path):
    lm = fresh(tiny_llama)
    apply_lora(lm.model, rank=4, alpha=4 * 20.0, targets=["self_attn.q_proj", "self_attn.v_proj"], num_layers=2)
    randomize(lm.model)
    ref = lm.model(TOKENS)
    folder = tmp_path / "mlxlm"
    folder.mkdir()
    mx.save_safetensors(str(folder / "adapters.safetensors"), adapter_weights(lm.model))
    (folder / "adapter_config.json").write_text(json.dumps({
        "model": str(tiny_llama), "fine_tune_type": "lora", "num_layers": -1,
        "lora_parameters": {"rank": 4, "scale": 20.0, "dropout": 0.0,
                            "keys": ["self_attn.q_proj", "self_attn.v_proj"]}}))
    cfg = read_adapter_config(folder)
    assert cfg["format"] == "mlx_lm" and cfg["base_model"] == str(tiny_llama)
    assert cfg["lora"]["alpha"] == 80.0 and cfg["lora"]["num_layers"] is None
    other = fresh(tiny_llama)
    load_adapter(other.model, folder)
    assert mx.allclose(ref, other.model(TOKENS), atol=1e-6).item()


def test_missing_or_corrupt_adapter_folders(tmp_path):
    with pytest.raises(AdapterError, match="not found"):
        read_adapter_config(tmp_path / "nope")
    (tmp_path / "a").mkdir()
    with pytest.raises(AdapterError, match="adapter_config.json not found"):
        read_adapter_config(tmp_path / "a")
    (tmp_path / "a" / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="corrupt"):
        read_adapter_config(tmp_path / "a")
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({"format": "mlx-text2sql-adapter",
                                                                      "lora": {"rank": 4, "alpha": 8}}))
    with pytest.raises(AdapterError, match="adapters.npz not found"):
        read_adapter_config(tmp_path / "a")


def test_adapter_for_another_base_model_is_refused(tiny_llama, tmp_path_factory, tmp_path):
    from tinymodels import make_tiny_model

    lm = fresh(tiny_llama)
    apply_lora(lm.model, rank=4)
    save_adapter(lm.model, tmp_path / "ad", {"base_model": str(tiny_llama)})

    wider = make_tiny_model(tmp_path_factory.mktemp("wide"), hidden=96, heads=4, kv_heads=2)
    with pytest.raises(AdapterError) as e:
        load_adapter(fresh(wider).model, tmp_path / "ad")
    msg = str(e.value)
    # names the layer and both shapes
    assert "model.layers.0.self_attn.q_proj.lora_a: adapter tensor has shape (64, 4), the model's layer needs (96, 4)" in msg

    deeper = make_tiny_model(tmp_path_factory.mktemp("deep"), layers=3)
    with pytest.raises(AdapterError, match=r"14 adapter tensor\(s\) missing: model.layers.2"):
        load_adapter(fresh(deeper).model, tmp_path / "ad")

    # an adapter holding a tensor the model has no LoRA layer for
    weights = dict(np.load(tmp_path / "ad" / "adapters.npz"))
    weights["model.layers.7.mlp.up_proj.lora_a"] = np.zeros((64, 4), np.float32)
    np.savez(tmp_path / "ad" / "adapters.npz", **weights)
    with pytest.raises(AdapterError, match=r"1 unexpected tensor\(s\).*model.layers.7.mlp.up_proj.lora_a"):
        load_adapter(fresh(tiny_llama).model, tmp_path / "ad")


@pytest.mark.parametrize("dora", [False, True])
def test_fuse_parity_dense(tiny_llama, dora):
    lm = fresh(tiny_llama, dtype="float32")
    apply_lora(lm.model, rank=8, alpha=16, dora=dora)
    randomize(lm.model)
    with_adapter = lm.model(TOKENS)
    fuse_lora(lm.model)
    assert not lora_layers(lm.model)
    assert isinstance(lm.model.model.layers[0].mlp.up_proj, nn.Linear)
    assert mx.allclose(with_adapter, lm.model(TOKENS), atol=1e-4, rtol=1e-4).item()
    # fusing again is a no-op
    params = dict(tree_flatten(lm.model.parameters()))
    fuse_lora(lm.model)
    assert all(mx.array_equal(v, dict(tree_flatten(lm.model.parameters()))[k]).item() for k, v in params.items())


def test_fuse_parity_quantized(tiny_llama):
    lm = fresh(tiny_llama, quantize=8, group_size=32)
    apply_lora(lm.model, rank=8, alpha=16)
    randomize(lm.model, std=0.2)
    with_adapter = lm.model(TOKENS)
    dense = fresh(tiny_llama, quantize=8, group_size=32)
    apply_lora(dense.model, rank=8, alpha=16)
    dense.model.load_weights(list(adapter_weights(lm.model).items()), strict=False)

    report = []
    fuse_lora(lm.model, report=report)  # re-quantized with the same bits and group size
    q = lm.model.model.layers[0].self_attn.q_proj
    assert isinstance(q, nn.QuantizedLinear) and (q.bits, q.group_size) == (8, 32)
    assert len(report) == 14 and all(r["lost_norm"] < 0.1 * r["update_norm"] for r in report)
    # 8-bit re-quantization: the fused model is close to the adapter model, not bit-equal
    assert mx.allclose(with_adapter, lm.model(TOKENS), atol=5e-2).item()

    fuse_lora(dense.model, dequantize=True)  # merged into dense weights: equal up to float error
    assert isinstance(dense.model.model.layers[0].self_attn.q_proj, nn.Linear)
    assert mx.allclose(with_adapter, dense.model(TOKENS), atol=1e-4, rtol=1e-4).item()


@pytest.mark.parametrize("quantize", [None, 4])
def test_fusing_a_zero_adapter_changes_nothing(tiny_llama, quantize):
    kw = {"quantize": quantize, "group_size": 32} if quantize else {}
    lm = fresh(tiny_llama, **kw)
    base = dict(tree_flatten(lm.model.parameters()))
    ref = lm.model(TOKENS)
    apply_lora(lm.model, rank=4)
    fuse_lora(lm.model)
    after = dict(tree_flatten(lm.model.parameters()))
    assert set(after) == set(base)
    assert all(mx.array_equal(base[k], after[k]).item() for k in base)
    assert mx.array_equal(ref, lm.model(TOKENS)).item()


def test_dora_round_trip(tiny_llama, tmp_path):
    lm = fresh(tiny_llama)
    apply_lora(lm.model, rank=4, dora=True, targets=["v_proj"])
    randomize(lm.model)
    layer = lm.model.model.layers[0].self_attn.v_proj
    layer.m = layer.m * 1.5  # a trained magnitude
    ref = lm.model(TOKENS)
    save_adapter(lm.model, tmp_path / "dora", {"base_model": str(tiny_llama)})
    assert "model.layers.0.self_attn.v_proj.m" in np.load(tmp_path / "dora" / "adapters.npz").files
    again = load_with_adapter(tmp_path / "dora")
    assert again.adapter["lora"]["dora"] is True
    assert mx.allclose(ref, again.model(TOKENS), atol=1e-5).item()
