"""Writing GGUF files (:func:`export_gguf`): a float16/float32 llama GGUF with the tokenizer
and chat template, readable by llama.cpp and by :func:`~.read.load_gguf`."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ...errors import ModelError
from .layout import (BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED, _LAYER_NAMES, _TOP_NAMES,
                     permute_qk)

# --------------------------------------------------------------------------- writing

def dense_weights(model) -> dict:
    """The model's parameters with every quantized layer dequantized (``name -> mx.array``).

    Dequantizes in float32 (scales and biases upcast first) so that nothing is lost before the
    caller picks the output dtype. The model itself is left unchanged."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    flat = dict(tree_flatten(model.parameters()))
    for name, module in model.named_modules():
        if not hasattr(module, "scales") or not hasattr(module, "bits") or not name:
            continue
        biases = getattr(module, "biases", None)
        flat[f"{name}.weight"] = mx.dequantize(
            module.weight, module.scales.astype(mx.float32),
            None if biases is None else biases.astype(mx.float32),
            group_size=module.group_size, bits=module.bits, mode=getattr(module, "mode", "affine"))
        flat.pop(f"{name}.scales", None)
        flat.pop(f"{name}.biases", None)
    return flat


def _tokenizer_json(tokenizer) -> dict:
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ModelError("GGUF export needs a fast (tokenizers-backed) tokenizer")
    return json.loads(backend.to_str())


def _token_table(tokenizer, vocab_size: int):
    """(tokens by id, token types, special id set) with the vocabulary padded to the model's rows."""
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    by_id: dict[int, str] = {i: t for t, i in hf.get_vocab().items()}
    data = _tokenizer_json(tokenizer)
    added = {a["id"]: a for a in data.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        t = by_id.get(i)
        if t is None:  # embedding rows past the tokenizer: llama.cpp expects a token for each
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        tokens.append(t)
        if i in added:
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", t) and data["model"].get("byte_fallback"):
            types.append(BYTE)
        elif data["model"].get("unk_token") == t:
            types.append(UNKNOWN)
        else:
            types.append(NORMAL)
    return tokens, types, data


def _pre_name(data: dict) -> str:
    pre = data.get("pre_tokenizer") or {}
    kinds = [p.get("type") for p in pre.get("pretokenizers", [])] if pre.get("type") == "Sequence" \
        else [pre.get("type")]
    if "Digits" in kinds:
        return "smollm"
    if "Split" in kinds:
        return "llama-bpe"
    return "gpt-2"


def export_gguf(model, tokenizer, config: dict, out_path: str | Path, dtype: str = "f16") -> Path:
    """Write ``model`` as a llama-architecture GGUF file llama.cpp can run.

    dtype: "f16" or "f32" for 2-D weights (norms are always float32, as llama.cpp expects);
    quantized layers are dequantized first. The tokenizer goes in as ``gpt2`` (byte-level BPE)
    or ``llama`` (SentencePiece-style BPE with byte fallback), with the chat template."""
    try:
        import gguf
    except ImportError:
        raise ModelError("GGUF export needs the 'gguf' package: pip install gguf") from None
    if dtype not in ("f16", "f32"):
        raise ModelError(f"GGUF export dtype must be f16 or f32 (got {dtype!r})")
    model_type = config.get("model_type", "llama")
    if model_type not in ("llama", "mistral"):
        raise ModelError(f"GGUF export supports llama-family models only (this one is {model_type!r})")
    if config.get("rope_scaling") and config["rope_scaling"].get("type", config["rope_scaling"].get(
            "rope_type")) not in ("linear",):
        raise ModelError(f"GGUF export: RoPE scaling {config['rope_scaling']} is not supported")

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    weights = dense_weights(model)
    vocab_size = int(weights["model.embed_tokens.weight"].shape[0])

    writer = gguf.GGUFWriter(str(out_path), "llama")
    _write_config(writer, gguf, config, out_path, vocab_size, dtype)
    _write_tokenizer(writer, tokenizer, config, vocab_size)
    _add_tensors(writer, weights, dtype, heads, kv_heads)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def _write_config(writer, gguf, config: dict, out_path: Path, vocab_size: int, dtype: str) -> None:
    """The llama.* hyper-parameters of ``config`` as GGUF metadata."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    writer.add_name(str(config.get("_name_or_path") or out_path.stem))
    writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != hidden // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    if config.get("rope_scaling"):
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(config["rope_scaling"]["factor"]))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    writer.add_vocab_size(vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)


def _add_tensors(writer, weights: dict, dtype: str, heads: int, kv_heads: int) -> None:
    """Every parameter under its llama.cpp name, q/k rows permuted for interleaved RoPE."""
    import mlx.core as mx
    import numpy as np

    to_gguf = {v: k for k, v in _TOP_NAMES.items()}
    to_gguf.update({v: k for k, v in _LAYER_NAMES.items()})
    float_type = np.float16 if dtype == "f16" else np.float32
    for name in sorted(weights, key=_tensor_order):
        w = weights[name]
        module, suffix = name.rsplit(".", 1)
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", module)
        gname = f"blk.{m.group(1)}.{to_gguf[m.group(2)]}" if m and m.group(2) in to_gguf \
            else to_gguf.get(module)
        if gname is None:
            raise ModelError(f"GGUF export: no llama.cpp name for parameter {name}")
        if module.endswith("q_proj"):
            w = permute_qk(w, heads)
        elif module.endswith("k_proj"):
            w = permute_qk(w, kv_heads)
        # llama.cpp keeps 1-D tensors (norms, biases) in float32
        arr = np.array(w.astype(mx.float32), copy=False).astype(np.float32 if w.ndim == 1 else float_type)
        writer.add_tensor(f"{gname}.{suffix}", arr)


def _tensor_order(name: str):
    m = re.match(r"model\.layers\.(\d+)\.", name)
    return (0 if "embed_tokens" in name else 1 if m else 2, int(m.group(1)) if m else 0, name)


def _write_tokenizer(writer, tokenizer, config: dict, vocab_size: int) -> None:
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    tokens, types, data = _token_table(tokenizer, vocab_size)
    model = data["model"]
    if model.get("type") != "BPE":
        raise ModelError(f"GGUF export supports BPE tokenizers only (this one is {model.get('type')})")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if model.get("byte_fallback"):
        # SentencePiece-style: llama.cpp ranks merges by the score of the merged piece, so give
        # each piece the negated rank of the merge that makes it.
        writer.add_tokenizer_model("llama")
        rank = {}
        for r, m in enumerate(merges):
            rank.setdefault(m.replace(" ", "", 1), r)
        scores = [-float(rank[t]) - 1.0 if t in rank else 0.0 for t in tokens]
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        normalizer = json.dumps(data.get("normalizer") or {})
        writer.add_add_space_prefix('"Prepend"' in normalizer or '"prepend_scheme": "always"' in normalizer
                                    or '"prepend_scheme": "first"' in normalizer)
    else:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_pre_name(data))
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
    ids = {"bos": hf.bos_token_id, "eos": hf.eos_token_id, "unk": hf.unk_token_id,
           "pad": hf.pad_token_id}
    if ids["bos"] is not None:
        writer.add_bos_token_id(int(ids["bos"]))
    if ids["eos"] is not None:
        writer.add_eos_token_id(int(ids["eos"]))
    if ids["unk"] is not None:
        writer.add_unk_token_id(int(ids["unk"]))
    if ids["pad"] is not None:
        writer.add_pad_token_id(int(ids["pad"]))
    post = json.dumps(data.get("post_processor") or {})
    bos_tok = hf.bos_token
    writer.add_add_bos_token(bool(bos_tok) and f'"id": "{bos_tok}"' in post)
    writer.add_add_eos_token(False)
    template = getattr(hf, "chat_template", None)
    if isinstance(template, str) and template:
        writer.add_chat_template(template)
