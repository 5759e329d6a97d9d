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

Where each part lives: :mod:`.read` (files to tensors, config, weights and an mlx_lm model;
:func:`load_gguf`), :mod:`.tokenizer` (the tokenizer from metadata), :mod:`.write`
(:func:`export_gguf`), :mod:`.layout` (llama.cpp's tensor names, q/k row order, token types).
"""

from __future__ import annotations

from .layout import (_LAYER_NAMES, _TOP_NAMES, BYTE, CONTROL, GROUP_SIZE, NORMAL, UNKNOWN, UNUSED,
                     USER_DEFINED, log, permute_qk, unpermute_qk)
from .read import (INSTALL_HINT, PACKAGE, _read_with_gguf_package, build_model, default_gguf_path,
                   gguf_config, gguf_to_hf_weights, load_gguf, quantization_from_weights, read_gguf)
from .tokenizer import gguf_tokenizer
from .write import dense_weights, export_gguf

__all__ = [
    "load_gguf", "export_gguf", "default_gguf_path", "read_gguf", "gguf_config", "gguf_to_hf_weights",
    "quantization_from_weights", "build_model", "gguf_tokenizer", "dense_weights", "permute_qk",
    "unpermute_qk", "log", "PACKAGE", "INSTALL_HINT", "GROUP_SIZE", "NORMAL", "UNKNOWN", "CONTROL",
    "USER_DEFINED", "UNUSED", "BYTE",
]
