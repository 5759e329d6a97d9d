"""Cheaper transcendental math for training where MLX runs on the CPU.

On the Linux CPU backend ``mx.exp`` (and so softmax, sigmoid and SiLU) is scalar, orders of
magnitude slower per element than a multiply-add: in a small model's LoRA step the attention
softmax and the MLP's SiLU, not the matrix products, take a large share of the time. Here
``exp`` is computed as ``2^n * p(f)`` (n = floor(x log2 e), f in [0, 1), p a degree-7 polynomial;
relative error < 1e-6) from multiply-adds and a bit shift, compiled into one kernel, with
hand-written gradients; :func:`fast_cross_entropy` uses it for the loss over the vocabulary.
:func:`fast_llama_ops` swaps these into mlx_lm's llama-family model
modules (SiLU-gated MLP and causal attention) for the duration of a ``with`` block; anything it
does not handle (KV caches, attention sinks, custom masks) goes to mlx_lm's own functions.
"""

from __future__ import annotations

import contextlib
import math
import sys

import mlx.core as mx

_LOG2E = 1.4426950408889634
# 2^f = e^(f ln 2) = sum (f ln 2)^k / k! : degree 7 is exact to float32 rounding on [0, 1).
_COEF = tuple(math.log(2) ** k / math.factorial(k) for k in range(8))


def _exp_poly(x):
    y = mx.clip(x * _LOG2E, -126.0, 127.0)
    n = mx.floor(y)
    f = y - n
    p = _COEF[7]
    for c in reversed(_COEF[:7]):
        p = p * f + c
    # 2^n for integer n: the float32 whose exponent bits are n + 127.
    two_n = mx.left_shift(n.astype(mx.int32) + 127, 23).view(mx.float32)
    return p * two_n


_exp_kernel = mx.compile(_exp_poly)


def _sigmoid(x):
    return 1.0 / (1.0 + _exp_poly(-x))


_sigmoid_kernel = mx.compile(_sigmoid)
_silu_kernel = mx.compile(lambda x: x * _sigmoid(x))


@mx.custom_function
def fast_exp(x):
    """exp(x) for float32 x (other dtypes are computed in float32); gradient exp(x)."""
    return _exp_kernel(x.astype(mx.float32)).astype(x.dtype)


@fast_exp.vjp
def _fast_exp_vjp(primals, cotangent, output):
    return cotangent * output


@mx.custom_function
def fast_silu(x):
    """x * sigmoid(x)."""
    return _silu_kernel(x.astype(mx.float32)).astype(x.dtype)


@fast_silu.vjp
def _fast_silu_vjp(primals, cotangent, output):
    x = primals
    s = _sigmoid_kernel(x.astype(mx.float32))
    return (cotangent * (s * (1.0 + x * (1.0 - s)))).astype(x.dtype)


@mx.custom_function
def fast_softmax(x):
    """Softmax over the last axis."""
    xf = x.astype(mx.float32)
    e = fast_exp(xf - mx.max(xf, axis=-1, keepdims=True))
    return (e / mx.sum(e, axis=-1, keepdims=True)).astype(x.dtype)


@fast_softmax.vjp
def _fast_softmax_vjp(primals, cotangent, output):
    p = output
    return p * (cotangent - mx.sum(cotangent * p, axis=-1, keepdims=True))


@mx.custom_function
def fast_cross_entropy(logits, targets):
    """Per-row cross-entropy of logits (N, V) against integer targets (N,), in float32."""
    x = logits.astype(mx.float32)
    m = mx.max(x, axis=-1, keepdims=True)
    lse = m[:, 0] + mx.log(mx.sum(fast_exp(x - m), axis=-1))
    return lse - mx.take_along_axis(x, targets[:, None], axis=-1)[:, 0]


@fast_cross_entropy.vjp
def _fast_cross_entropy_vjp(primals, cotangent, output):
    logits, targets = primals
    x = logits.astype(mx.float32)
    # softmax recomputed (one cheap pass) rather than kept alive from the forward: (N, V) floats
    e = fast_exp(x - mx.max(x, axis=-1, keepdims=True))
    p = e / mx.sum(e, axis=-1, keepdims=True)
    onehot = mx.arange(x.shape[-1])[None, :] == targets[:, None]
    g = cotangent[:, None] * (p - onehot)
    return g.astype(logits.dtype), mx.zeros_like(targets)


def swiglu(gate, x):
    return fast_silu(gate) * x


def causal_attention(queries, keys, values, scale: float, mask=None):
    """Causal multi-head attention with grouped KV heads.

    queries (B, H, L, D); keys, values (B, Hkv, S, D) with H a multiple of Hkv and S >= L (the
    last L key positions are the queries' own). Returns (B, H, L, D). mask: an optional boolean
    (B or 1, 1, L, S) array of allowed positions, used instead of the causal pattern.
    """
    B, H, L, D = queries.shape
    Hkv, S = keys.shape[1], keys.shape[2]
    rep = H // Hkv
    q = (queries * scale).reshape(B, Hkv, rep, L, D)          # queries grouped by their KV head
    scores = q @ keys[:, :, None].swapaxes(-1, -2)            # (B, Hkv, rep, L, S)
    if mask is None:
        allowed = (mx.arange(L)[:, None] + (S - L)) >= mx.arange(S)[None, :]
    else:
        allowed = mask[:, :, None]                            # (B, 1, 1, L, S)
    scores = mx.where(allowed, scores, mx.array(-1e30, scores.dtype))
    out = fast_softmax(scores) @ values[:, :, None]           # (B, Hkv, rep, L, D)
    return out.reshape(B, H, L, D)


def _make_sdpa(original):
    def scaled_dot_product_attention(queries, keys, values, cache, scale, mask, sinks=None):
        if sinks is None and isinstance(mask, mx.array) and mask.dtype == mx.bool_ and mask.ndim == 4 \
                and not hasattr(cache, "bits"):
            return causal_attention(queries, keys, values, scale, mask)  # training's packed masks
        if cache is None and sinks is None and (mask is None or (isinstance(mask, str) and mask == "causal")):
            if mask is None and queries.shape[2] > 1:
                return original(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)
            return causal_attention(queries, keys, values, scale)
        return original(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)

    return scaled_dot_product_attention


# mlx_lm model modules whose blocks call module-level `swiglu` and `scaled_dot_product_attention`
# with these signatures (mistral is llama's module; smollm3 builds llama blocks).
SUPPORTED = ("mlx_lm.models.llama", "mlx_lm.models.qwen2", "mlx_lm.models.qwen3", "mlx_lm.models.phi3")


def _block_modules(model) -> list:
    layers = getattr(model, "layers", None)
    if not layers:
        return []
    block = layers[0]
    names = {type(block).__module__}
    for child in ("self_attn", "mlp"):
        if child in block:
            names.add(type(block[child]).__module__)
    return [sys.modules[n] for n in sorted(names) if n in SUPPORTED and n in sys.modules]


@contextlib.contextmanager
def fast_llama_ops(model, enabled: bool = True):
    """Within the block, route the model's SiLU-gated MLP and causal attention through the
    functions above (for blocks from mlx_lm's llama/mistral, qwen2/3 and phi3 modules; otherwise
    a no-op). Yields True when it patched something."""
    saved = []
    if enabled:
        for module in _block_modules(model):
            for name, make in (("swiglu", lambda orig: swiglu), ("scaled_dot_product_attention", _make_sdpa)):
                orig = getattr(module, name, None)
                if orig is not None:
                    saved.append((module, name, orig))
                    setattr(module, name, make(orig))
    try:
        yield bool(saved)
    finally:
        for module, name, orig in reversed(saved):
            setattr(module, name, orig)
