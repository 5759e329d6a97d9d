"""The polynomial exp and the softmax / SiLU / attention built on it match MLX's own, values and
gradients, and swapping them into a llama model changes neither its loss nor its gradients."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_text2sql.tuner import fastops
from mlx_text2sql.tuner.fastops import (causal_attention, fast_exp, fast_llama_ops, fast_silu,
                                        fast_softmax)


def close(a, b, rtol=2e-6, atol=1e-7):
    return np.allclose(np.array(a), np.array(b), rtol=rtol, atol=atol)


def test_exp_is_accurate_over_the_float_range():
    x = mx.concatenate([mx.linspace(-87, 88, 100_001), mx.array([0.0, -1e-8, 1e-8, -0.5, 0.5])])
    assert close(fast_exp(x), mx.exp(x), rtol=1e-6, atol=0)
    tiny = fast_exp(mx.array([-1e30, -float("inf"), -200.0]))
    assert (np.array(tiny) < 1e-37).all() and (np.array(tiny) >= 0).all()
    g = mx.grad(lambda x: fast_exp(x).sum())(mx.array([-3.0, 0.0, 2.5]))
    assert close(g, mx.exp(mx.array([-3.0, 0.0, 2.5])))


def test_silu_and_softmax_match_values_and_gradients():
    mx.random.seed(0)
    x = mx.random.normal((4, 33, 70)) * 6
    w = mx.random.normal(x.shape)
    assert close(fast_silu(x), nn.silu(x), atol=1e-6)
    g1 = mx.grad(lambda x: (fast_silu(x) * w).sum())(x)
    g2 = mx.grad(lambda x: (nn.silu(x) * w).sum())(x)
    assert close(g1, g2, rtol=1e-5, atol=1e-6)
    assert close(fast_softmax(x), mx.softmax(x, axis=-1), atol=1e-7)
    g1 = mx.grad(lambda x: (fast_softmax(x) * w).sum())(x)
    g2 = mx.grad(lambda x: (mx.softmax(x, axis=-1) * w).sum())(x)
    assert close(g1, g2, rtol=1e-5, atol=1e-6)


def test_cross_entropy_matches_values_and_gradients():
    from mlx_text2sql.tuner.fastops import fast_cross_entropy

    mx.random.seed(2)
    logits = mx.random.normal((37, 500)) * 8
    targets = mx.random.randint(0, 500, (37,))
    w = mx.random.uniform(shape=(37,))
    assert close(fast_cross_entropy(logits, targets), nn.losses.cross_entropy(logits, targets), rtol=1e-5, atol=1e-5)
    g1 = mx.grad(lambda x: (fast_cross_entropy(x, targets) * w).sum())(logits)
    g2 = mx.grad(lambda x: (nn.losses.cross_entropy(x, targets) * w).sum())(logits)
    assert close(g1, g2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("heads,kv_heads,L,S", [(4, 2, 17, 17), (6, 6, 9, 9), (4, 1, 1, 12)])
def test_causal_attention_matches_mlx_sdpa(heads, kv_heads, L, S):
    mx.random.seed(1)
    q = mx.random.normal((2, heads, L, 16))
    k = mx.random.normal((2, kv_heads, S, 16))
    v = mx.random.normal((2, kv_heads, S, 16))
    mask = "causal" if L == S else None
    ref = lambda q, k, v: mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=mask)
    ours = lambda q, k, v: causal_attention(q, k, v, 0.25)
    assert close(ours(q, k, v), ref(q, k, v), rtol=1e-5, atol=1e-6)
    w = mx.random.normal((2, heads, L, 16))
    ga = mx.grad(lambda *a: (ours(*a) * w).sum(), argnums=(0, 1, 2))(q, k, v)
    gb = mx.grad(lambda *a: (ref(*a) * w).sum(), argnums=(0, 1, 2))(q, k, v)
    assert all(close(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(ga, gb))


def test_patched_llama_gives_the_same_loss_and_lora_gradients(tiny_llama):
    from mlx_text2sql.models.load import load_model
    from mlx_text2sql.tuner.lora import apply_lora

    mx.random.seed(0)
    lm = load_model(str(tiny_llama))
    apply_lora(lm.model, rank=4)
    for _, layer in tree_flatten(lm.model.leaf_modules(), is_leaf=lambda m: isinstance(m, nn.Module)):
        if hasattr(layer, "lora_b"):
            layer.lora_b = mx.random.normal(layer.lora_b.shape) * 0.1
    tokens = mx.array([[1, 7, 30, 99, 120, 5, 64, 200, 2, 17, 3, 3]])
    model = lm.model
    module = __import__(type(model).__module__, fromlist=["x"])
    original = module.scaled_dot_product_attention

    def loss(model, x):
        return nn.losses.cross_entropy(model(x[:, :-1]), x[:, 1:]).mean()

    ref_l, ref_g = nn.value_and_grad(model, loss)(model, tokens)
    with fast_llama_ops(model) as patched:
        assert patched and module.scaled_dot_product_attention is not original
        l, g = nn.value_and_grad(model, loss)(model, tokens)
        # generation-style calls (a KV cache) still go to mlx_lm's own attention
        from mlx_lm.models.cache import make_prompt_cache
        cache = make_prompt_cache(model)
        cached = model(tokens, cache=cache)
    assert module.scaled_dot_product_attention is original  # restored
    assert abs(l.item() - ref_l.item()) < 1e-5
    fg, rg = dict(tree_flatten(g)), dict(tree_flatten(ref_g))
    assert fg.keys() == rg.keys() and all(close(fg[k], rg[k], rtol=1e-4, atol=1e-6) for k in fg)
    assert close(cached, model(tokens), rtol=1e-4, atol=1e-5)


def test_unsupported_architectures_are_left_alone():
    class Other(nn.Module):
        pass

    with fast_llama_ops(Other()) as patched:
        assert not patched
    assert "mlx_lm.models.llama" in fastops.SUPPORTED
