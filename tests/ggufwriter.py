"""Test helper: write a llama GGUF from a tiny Hugging Face folder with ``gguf.GGUFWriter``.

Written independently of ``mlx_text2sql.models.gguf`` (its own name table and q/k permutation,
following llama.cpp's converter), so the loader is checked against the format, not against
itself. Also writes the reference Hugging Face folder holding exactly the weights the GGUF
represents (quantized tensors dequantized by the gguf package), for logit parity tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

NAMES = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf: str) -> str:
    module, suffix = hf.rsplit(".", 1)
    parts = module.split(".")
    if parts[:2] == ["model", "layers"]:
        return f"blk.{parts[2]}.{NAMES['.'.join(parts[3:])]}.{suffix}"
    return f"{NAMES[module]}.{suffix}"


def llama_cpp_permute(w, n_head):
    """llama.cpp convert_hf_to_gguf's permute for q/k weights (HF -> interleaved RoPE rows)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def tokenizer_metadata(tok) -> dict:
    """GGUF byte-level BPE tokenizer fields from a transformers fast tokenizer."""
    data = json.loads(tok.backend_tokenizer.to_str())
    vocab = tok.get_vocab()
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    special = {a["id"] for a in data["added_tokens"] if a["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    return {
        "model": "gpt2", "pre": "gpt-2", "tokens": tokens, "merges": merges,
        "types": [3 if i in special else 1 for i in range(len(tokens))],
        "bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id,
        "template": tok.chat_template,
    }


def spm_metadata(sp, template: str | None = None, user_defined=()) -> dict:
    """GGUF llama (SentencePiece) tokenizer fields from a sentencepiece processor."""
    types = []
    for i in range(sp.get_piece_size()):
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i)
                     else 5 if sp.is_unused(i) else 4 if sp.id_to_piece(i) in user_defined else 1)
    return {
        "model": "llama", "tokens": [sp.id_to_piece(i) for i in range(sp.get_piece_size())],
        "scores": [sp.get_score(i) for i in range(sp.get_piece_size())], "types": types,
        "bos": sp.bos_id(), "eos": sp.eos_id(), "unk": sp.unk_id(), "add_bos": True,
        "template": template,
    }


def _pick(qtype, name):
    if not isinstance(qtype, dict):
        return qtype
    for key, q in qtype.items():
        if key != "*" and key in name:
            return q
    return qtype.get("*")


def write_gguf(folder, out, *, qtype=None, embed_qtype=None, tok_meta=None, arch="llama",
               extra_tensors=None, reference_folder=None) -> dict:
    """Write ``folder``'s model as a GGUF at ``out``; return the weights it represents.

    qtype: a ``GGMLQuantizationType`` name for 2-D weights other than the embedding (None: F32),
    or a dict from a parameter-name substring to a type name ("*" for the rest);
    embed_qtype: the same for the embedding (None: F32). When ``reference_folder`` is given, a
    copy of ``folder`` with the represented (dequantized) weights is written there.
    """
    import gguf
    import mlx.core as mx
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from transformers import AutoTokenizer

    folder, out = Path(folder), Path(out)
    cfg = json.loads((folder / "config.json").read_text())
    weights = {k: np.array(v.astype(mx.float32)) for k, v in mx.load(str(folder / "model.safetensors")).items()}
    tok = AutoTokenizer.from_pretrained(folder)
    meta = tok_meta or tokenizer_metadata(tok)

    w = gguf.GGUFWriter(str(out), arch)
    w.add_name("tiny")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_tokenizer_model(meta["model"])
    if "pre" in meta:
        w.add_tokenizer_pre(meta["pre"])
    w.add_token_list(meta["tokens"])
    if "scores" in meta:
        w.add_token_scores(meta["scores"])
    w.add_token_types(meta["types"])
    if meta.get("merges"):
        w.add_token_merges(meta["merges"])
    w.add_bos_token_id(meta["bos"])
    w.add_eos_token_id(meta["eos"])
    if meta.get("unk") is not None:
        w.add_unk_token_id(meta["unk"])
    if meta.get("pad") is not None:
        w.add_pad_token_id(meta["pad"])
    w.add_add_bos_token(bool(meta.get("add_bos", False)))
    if meta.get("template"):
        w.add_chat_template(meta["template"])

    represented = {}
    for name in sorted(weights):
        arr = weights[name]
        q = embed_qtype if name == "model.embed_tokens.weight" else _pick(qtype, name) if arr.ndim == 2 else None
        if q is not None:
            data = gguf.quants.quantize(arr, Q[q])
            represented[name] = gguf.quants.dequantize(data, Q[q]).astype(np.float32)
        else:
            data = arr
            represented[name] = arr
        if ".q_proj." in name:
            data = llama_cpp_permute(data, cfg["num_attention_heads"])
        elif ".k_proj." in name:
            data = llama_cpp_permute(data, cfg["num_key_value_heads"])
        w.add_tensor(gguf_name(name), np.ascontiguousarray(data), raw_dtype=Q[q] if q else None)
    for name, arr in (extra_tensors or {}).items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    if reference_folder is not None:
        ref = Path(reference_folder)
        shutil.copytree(folder, ref, dirs_exist_ok=True)
        mx.save_safetensors(str(ref / "model.safetensors"), {k: mx.array(v) for k, v in represented.items()},
                            metadata={"format": "mlx"})
    return represented
