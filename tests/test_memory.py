"""Memory estimates (exact for weights, monotone for training) and the one-line warning."""

from __future__ import annotations

import sys

import pytest

from mlx_text2sql.models import memory

CONFIG = {  # SmolLM2-135M
    "model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536,
    "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
    "tie_word_embeddings": True,
}


def test_smollm2_parameter_count():
    linear, other = memory.count_parameters(CONFIG)
    # the published size of SmolLM2-135M: 134,515,008 parameters
    assert linear + other == 134_515_008
    assert other == 49152 * 576 + 61 * 576


def _params(model):
    from mlx.utils import tree_flatten

    return sum(v.size for _, v in tree_flatten(model.parameters()))


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_mistral"])
def test_counts_match_real_models(fixture, request):
    pytest.importorskip("mlx.core")
    from mlx_text2sql.models import load_model

    lm = load_model(request.getfixturevalue(fixture))
    assert sum(memory.count_parameters(lm.config)) == _params(lm.model)
    assert memory.weight_bytes(lm.config, "float32") == 4 * _params(lm.model)
    assert memory.weight_bytes(lm.model) == 4 * _params(lm.model)
    assert memory.weight_bytes(lm.model, "bfloat16") == 2 * _params(lm.model)


def test_quantized_model_bytes(tiny_llama):
    pytest.importorskip("mlx.core")
    from mlx_text2sql.models import load_model

    dense = load_model(tiny_llama)
    q = load_model(tiny_llama, quantize=4, group_size=32)
    n = _params(dense.model)
    # as stored: far below float32; dequantized to float32: exactly the dense model
    assert memory.weight_bytes(q.model) < 0.3 * 4 * n
    assert memory.weight_bytes(q.model, "float32") == 4 * n
    from_config = memory.weight_bytes(q.config)
    assert abs(from_config - memory.weight_bytes(q.model)) < 0.1 * memory.weight_bytes(q.model)


def test_training_estimates_grow_with_work():
    base = memory.estimate_bytes(CONFIG, dtype="float32")
    assert base >= memory.weight_bytes(CONFIG, "float32")
    small = memory.estimate_bytes(CONFIG, training=True, batch_size=1, seq_len=128, dtype="float32")
    assert small > base
    assert memory.estimate_bytes(CONFIG, training=True, batch_size=4, seq_len=128, dtype="float32") > small
    assert memory.estimate_bytes(CONFIG, training=True, batch_size=1, seq_len=512, dtype="float32") > small
    lora = memory.estimate_bytes(CONFIG, training=True, batch_size=1, seq_len=128, dtype="float32",
                                 lora_params=1_000_000)
    assert lora - small >= 16_000_000  # weight + gradient + two Adam moments in float32
    # SmolLM2 LoRA at B=4, L=256 fits in a few GB, not tens
    gb = memory.estimate_bytes(CONFIG, training=True, batch_size=4, seq_len=256, dtype="float32") / memory.GB
    assert 1 < gb < 8
    assert memory.estimate_bytes(10_000) == 10_500


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/meminfo")
def test_available_bytes_linux():
    avail, how = memory.available_bytes()
    assert isinstance(avail, int) and avail > 0
    assert "memory" in how or "cgroup" in how


def test_check_memory_warns_once(capsys, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: (4 * memory.GB, "test"))
    assert memory.check_memory(needed=memory.GB) is True
    assert capsys.readouterr().err == ""
    assert memory.check_memory(CONFIG, what="training", training=True, batch_size=64,
                               seq_len=2048, dtype="float32") is False
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("[mlx-text2sql] warning: training needs about ")
    assert "but only 4.0 GB is free (test)" in err
    monkeypatch.setattr(memory, "available_bytes", lambda: (None, "unknown"))
    assert memory.check_memory(needed=10**18) is True
