"""The engine's hooks into mlx_lm's model code: attention and SwiGLU kernels, and what a
model's structure allows (batching, projecting only the last prefill column).

mlx_lm's attention layers call their module's ``scaled_dot_product_attention`` and ``swiglu``;
:func:`_install_decode_attention` wraps those names once per module so that calls made with
this engine's caches go to :func:`decode_attention` (few queries) or, on MLX's CPU backend, to
:func:`host_attention` / :func:`host_swiglu`, and every other call to the original.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from .cache import _LayerCache

DECODE_ATTENTION_MAX_QUERIES = 8  # queries per row up to which :func:`decode_attention` is used


def decode_attention(queries: mx.array, keys: mx.array, values: mx.array, scale: float, mask) -> mx.array:
    """Scaled dot-product attention for a few queries per row (decode steps, draft blocks),
    as two batched matrix products over the grouped-query layout.

    queries (B, H, L, D); keys, values (B, Hkv, T, D) with H a multiple of Hkv; mask None,
    "causal" (the queries are the last L of the T columns) or a boolean array broadcastable
    to (B, 1, L, T). The query heads that share a key/value head are stacked into one matrix,
    so each cached key and value is read once per step, not once per query head. On MLX's
    CPU backend this beats ``mx.fast.scaled_dot_product_attention`` at batched-decoding shapes
    (many rows, hundreds of cached columns, several query heads per key/value head), where
    attention is a large part of a decode step (``benchmarks/cpu_kernels.py`` times both).
    Same numbers up to float rounding (softmax in float32)."""
    B, H, L, D = queries.shape
    kvh, T = keys.shape[1], keys.shape[2]
    rep = H // kvh
    q = (queries * scale).reshape(B, kvh, rep * L, D)
    s = (q @ keys.swapaxes(-1, -2)).reshape(B, kvh, rep, L, T)
    if isinstance(mask, str):
        allowed = mx.arange(T)[None, :] <= mx.arange(T - L, T)[:, None]
        s = mx.where(allowed, s, -mx.inf)
    elif mask is not None:
        mask = mask.reshape(mask.shape[0] if mask.ndim == 4 else 1, 1, 1, L, T)
        if mask.dtype == mx.bool_:
            s = mx.where(mask, s, -mx.inf)
        else:  # an additive mask
            s = s + mask
    p = mx.softmax(s, axis=-1, precise=True).reshape(B, kvh, rep * L, T)
    return (p @ values.astype(p.dtype)).astype(queries.dtype).reshape(B, H, L, D)


def host_attention(queries: mx.array, keys: mx.array, values: mx.array, scale: float, mask) -> mx.array:
    """:func:`decode_attention` with the softmax (mask, max, exponentials, sums) computed by
    NumPy on the host, for any number of queries. For MLX's CPU backend only: its ``exp`` is
    scalar, many times slower than NumPy's vectorised one, and the softmax is a large part of
    a prefill over a schema (``benchmarks/cpu_kernels.py`` times both). The score and value
    products stay in MLX; the scores are evaluated here (a host sync per layer)."""
    B, H, L, D = queries.shape
    kvh, T = keys.shape[1], keys.shape[2]
    rep = H // kvh
    q = (queries * scale).reshape(B, kvh, rep * L, D)
    s = (q @ keys.swapaxes(-1, -2)).astype(mx.float32).reshape(B, kvh, rep, L, T)
    a = np.asarray(s)  # a view of MLX's buffer: never written to
    if isinstance(mask, str):
        w = np.where(np.tri(L, T, T - L, dtype=bool), a, -np.inf)
    elif mask is not None:
        if mask.dtype != mx.bool_ and mask.dtype != mx.float32:
            mask = mask.astype(mx.float32)
        m = np.asarray(mask)
        m = m.reshape(m.shape[0] if m.ndim == 4 else 1, 1, 1, L, T)
        w = np.where(m, a, -np.inf) if m.dtype == np.bool_ else a + m
    else:
        w = a.copy()
    with np.errstate(invalid="ignore", divide="ignore"):  # a fully masked row: NaN, as in MLX
        w -= w.max(axis=-1, keepdims=True)
        np.exp(w, out=w)
        w /= w.sum(axis=-1, keepdims=True)
    p = mx.array(w.reshape(B, kvh, rep * L, T))
    return (p @ values.astype(p.dtype)).astype(queries.dtype).reshape(B, H, L, D)


def host_swiglu(gate: mx.array, x: mx.array) -> mx.array:
    """``silu(gate) * x`` (mlx_lm's ``swiglu``) with the sigmoid's exponentials computed by
    NumPy (see :func:`host_attention`); float32 arrays of one shape."""
    g = np.asarray(gate)
    with np.errstate(over="ignore"):
        out = np.exp(-g)
    out += 1.0
    np.divide(g, out, out=out)
    out *= np.asarray(x)
    return mx.array(out)


class _HostMath:
    """Whether :func:`host_attention` / :func:`host_swiglu` are in use: only while a
    :class:`SQLGenerator` that enabled them is generating (so mlx_lm's own generation in the
    same process is untouched)."""

    active = False


_HOST_MATH = _HostMath()


def _install_decode_attention(model) -> bool:
    """Route the attention of ``model``'s layers through :func:`decode_attention` when they
    are called with this engine's caches and few queries. mlx_lm's attention layers call
    their module's ``scaled_dot_product_attention``; that name is wrapped once per module, and
    the wrapper hands every other call (other caches, quantized caches, attention sinks,
    prefill blocks) to the original unchanged, so mlx_lm's own generation in the same process
    is not affected. Returns whether the model's module could be wrapped."""
    import sys

    module = sys.modules.get(type(model).__module__)
    original = getattr(module, "scaled_dot_product_attention", None)
    if original is None or not callable(original):
        return False
    if getattr(original, "_mlx_text2sql_wrapped", False):
        return True

    def scaled_dot_product_attention(queries, keys, values, cache, scale, mask, sinks=None, **kw):
        if (isinstance(cache, _LayerCache) and sinks is None and not kw
                and queries.shape[1] % keys.shape[1] == 0):
            if _HOST_MATH.active:
                return host_attention(queries, keys, values, scale, mask)
            if queries.shape[2] <= DECODE_ATTENTION_MAX_QUERIES:
                return decode_attention(queries, keys, values, scale, mask)
        if sinks is not None:
            kw["sinks"] = sinks
        return original(queries, keys, values, cache=cache, scale=scale, mask=mask, **kw)

    scaled_dot_product_attention._mlx_text2sql_wrapped = True
    scaled_dot_product_attention.__wrapped__ = original
    setattr(module, "scaled_dot_product_attention", scaled_dot_product_attention)

    swiglu = getattr(module, "swiglu", None)
    if callable(swiglu) and not getattr(swiglu, "_mlx_text2sql_wrapped", False):
        def engine_swiglu(gate, x):
            if _HOST_MATH.active and gate.dtype == mx.float32 and x.dtype == mx.float32 and gate.shape == x.shape:
                return host_swiglu(gate, x)
            return swiglu(gate, x)

        engine_swiglu._mlx_text2sql_wrapped = True
        engine_swiglu.__wrapped__ = swiglu
        setattr(module, "swiglu", engine_swiglu)
    return True


# Model classes whose ``__call__`` is exactly "backbone, then the (tied or separate) output
# projection", so a prefill block can run the backbone over all its columns and project only
# the last one.
_PLAIN_HEAD_MODULES = {"mlx_lm.models.llama", "mlx_lm.models.qwen2", "mlx_lm.models.qwen3"}


def _backbone_and_head(model):
    """(backbone, head) of a model of :data:`_PLAIN_HEAD_MODULES`, else None."""
    if type(model).__module__ not in _PLAIN_HEAD_MODULES:
        return None
    inner = getattr(model, "model", None)
    args = getattr(model, "args", None)
    if inner is None or args is None:
        return None
    if getattr(args, "tie_word_embeddings", False):
        embed = getattr(inner, "embed_tokens", None)
        return (inner, embed.as_linear) if embed is not None else None
    head = getattr(model, "lm_head", None)
    return (inner, head) if head is not None else None


def _supports_batching(model) -> bool:
    from mlx_lm.models.cache import KVCache, make_prompt_cache

    try:
        caches = make_prompt_cache(model)
    except Exception:
        return False
    return bool(caches) and all(type(c) is KVCache for c in caches)
