"""How llama.cpp lays out a llama model: tensor names, q/k row order, token types, block size."""

from __future__ import annotations

import sys

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


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
