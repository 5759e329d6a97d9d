"""Write a model as a standard Hugging Face / MLX folder that ``mlx_lm.load`` (and our loader) reads.

The folder holds ``model.safetensors`` (or numbered shards plus ``model.safetensors.index.json``
when the weights pass ``max_shard_gb``), ``config.json`` and the tokenizer files with the chat
template. Unquantized llama models saved here are plain Hugging Face llama folders: transformers
reads their config and tokenizer (its model classes need torch, which we do not require).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ModelError

DEFAULT_MAX_SHARD_GB = 2.0


def save_model_folder(model, tokenizer, config: dict, path: str | Path, *,
                      max_shard_gb: float = DEFAULT_MAX_SHARD_GB) -> Path:
    """Save ``model`` (an mlx_lm model), its tokenizer and config dict into folder ``path``.

    Weights previously saved in ``path`` are removed first, so stale shards never mix with new
    ones. ``config`` is not modified; the written copy gets ``rope_theta``, ``model_type``, the
    quantization actually present in the model (per-module bit widths included) and the EOS ids.
    Returns the folder.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ModelError(f"cannot save a model folder to {path}: it is a file")
    path.mkdir(parents=True, exist_ok=True)
    for old in list(path.glob("model*.safetensors")) + list(path.glob("model.safetensors.index.json")):
        old.unlink()

    weights = dict(tree_flatten(model.parameters()))
    mx.eval(list(weights.values()))
    shards = _shards(weights, int(max_shard_gb * (1 << 30)))
    if len(shards) == 1:
        mx.save_safetensors(str(path / "model.safetensors"), shards[0], metadata={"format": "mlx"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            mx.save_safetensors(str(path / name), shard, metadata={"format": "mlx"})
            weight_map.update({k: name for k in shard})
        index = {"metadata": {"total_size": sum(v.nbytes for v in weights.values())},
                 "weight_map": dict(sorted(weight_map.items()))}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    out_config = folder_config(model, tokenizer, config, weights)
    (path / "config.json").write_text(json.dumps(out_config, indent=2, sort_keys=True))
    hf_tok = getattr(tokenizer, "_tokenizer", tokenizer)
    hf_tok.save_pretrained(str(path))
    return path


def _shards(weights: dict, max_bytes: int) -> list[dict]:
    shards: list[dict] = []
    size = 0
    for name in sorted(weights):
        value = weights[name]
        if not shards or (size + value.nbytes > max_bytes and shards[-1]):
            shards.append({})
            size = 0
        shards[-1][name] = value
        size += value.nbytes
    return shards


def folder_config(model, tokenizer, config: dict, weights: dict | None = None) -> dict[str, Any]:
    """The config.json content for ``model``: ``config`` made consistent with the weights."""
    from mlx.utils import tree_flatten

    out = {k: v for k, v in config.items() if not k.startswith("_")}
    if "model_type" not in out:
        raise ModelError("cannot save a model whose config has no model_type")
    # transformers 5 writes rope_parameters instead of rope_theta; mlx_lm 0.32 only reads the latter
    rope = out.get("rope_parameters")
    if "rope_theta" not in out and isinstance(rope, dict) and "rope_theta" in rope:
        out["rope_theta"] = rope["rope_theta"]
    if "rope_theta" not in out and out["model_type"] in ("llama", "mistral"):
        out["rope_theta"] = 10000.0

    quant = model_quantization(model)
    out.pop("quantization", None)
    out.pop("quantization_config", None)
    if quant:
        out["quantization"] = quant
        out["quantization_config"] = quant  # the name Hugging Face tooling looks for

    weights = weights if weights is not None else dict(tree_flatten(model.parameters()))
    floats = [str(v.dtype).split(".")[-1] for v in weights.values() if "float" in str(v.dtype)]
    if floats:
        dtype = max(set(floats), key=floats.count)
        out["torch_dtype"] = dtype
    embed = weights.get("model.embed_tokens.weight")
    if embed is not None:  # (vocab, hidden), or (vocab, packed) when quantized: rows either way
        out["vocab_size"] = int(embed.shape[0])
    out["tie_word_embeddings"] = not any(k.startswith("lm_head.") for k in weights)

    eos = sorted(getattr(tokenizer, "eos_token_ids", None) or [])
    if eos:
        out["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    hf_tok = getattr(tokenizer, "_tokenizer", tokenizer)
    if getattr(hf_tok, "bos_token_id", None) is not None:
        out["bos_token_id"] = hf_tok.bos_token_id
    return out


def model_quantization(model) -> dict | None:
    """``config["quantization"]`` describing the quantized layers actually in ``model``.

    The most common (group size, bits) is the default; layers that differ (an 8-bit embedding in
    a 4-bit model) are listed by module path, which is the form mlx_lm's loader reads."""
    layers = {}
    for name, module in model.named_modules():
        if name and hasattr(module, "scales") and hasattr(module, "bits"):
            q = {"group_size": int(module.group_size), "bits": int(module.bits)}
            mode = getattr(module, "mode", "affine")
            if mode != "affine":
                q["mode"] = mode
            layers[name] = q
    if not layers:
        return None
    keys = [json.dumps(q, sort_keys=True) for q in layers.values()]
    default = json.loads(max(sorted(set(keys)), key=keys.count))
    quant = dict(default)
    for name, q in sorted(layers.items()):
        if q != default:
            quant[name] = q
    return quant
