"""How much memory a model needs, how much the machine has, and one warning line when it won't fit.

Estimates are deliberately simple (weights + LoRA training state + activations + logits) and
err on the high side: they exist to warn a user before a 7B model swaps a 16 GB laptop to a halt,
not to budget bytes. Nothing here imports MLX unless it is handed an MLX model.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

GB = 1 << 30
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


def count_parameters(config: dict) -> tuple[int, int]:
    """(parameters in the transformer layers' linear maps, all other parameters) of a llama-like
    config: the second part is the embedding, the output head unless tied, and the norms."""
    cfg = config.get("text_config", config)
    hidden = int(cfg["hidden_size"])
    layers = int(cfg["num_hidden_layers"])
    inter = int(cfg.get("intermediate_size") or 4 * hidden)
    heads = int(cfg.get("num_attention_heads") or 1)
    kv = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    vocab = int(cfg.get("vocab_size") or 32000)
    attn = hidden * heads * head_dim * 2 + hidden * kv * head_dim * 2  # q, o + k, v
    mlp = 3 * hidden * inter  # gate, up, down
    linear = layers * (attn + mlp)
    other = vocab * hidden * (1 if cfg.get("tie_word_embeddings", False) else 2)
    other += (2 * layers + 1) * hidden  # two RMSNorms a layer and the final one
    if cfg.get("attention_bias"):
        other += layers * ((heads + 2 * kv) * head_dim + hidden)  # q, k, v, o biases
    if cfg.get("mlp_bias"):
        other += layers * (2 * inter + hidden)
    return linear, other


def _is_config(source) -> bool:
    # an mlx nn.Module is a dict subclass too: tell them apart by its parameters() method
    return isinstance(source, dict) and not callable(getattr(source, "parameters", None))


def weight_bytes(source: Any, dtype: str | None = None) -> int:
    """Bytes of the weights of a config dict or an MLX model.

    dtype None: as stored (quantized layers at their bit width); else every weight dense at dtype.
    """
    if _is_config(source):
        linear, other = count_parameters(source)
        quant = source.get("quantization") or source.get("quantization_config")
        stored = _ITEMSIZE.get(str(source.get("torch_dtype") or "float32"), 4)
        if dtype is None and isinstance(quant, dict) and quant.get("bits"):
            group = int(quant.get("group_size") or 64)
            # packed weights + a scale and a bias per group, in the model's float dtype
            per_param = int(quant["bits"]) / 8 + 2 * stored / group
            return int((linear + other) * per_param)
        return (linear + other) * (_ITEMSIZE[dtype] if dtype else stored)
    return _model_bytes(source, dtype)


def _model_bytes(model, dtype: str | None) -> int:
    from mlx.utils import tree_flatten

    if dtype is None:
        return sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    item = _ITEMSIZE[dtype]
    total = 0
    quantized = set()
    for name, module in model.named_modules():
        if hasattr(module, "scales") and hasattr(module, "bits"):
            quantized.add(name)
            # (out, in * bits / 32) uint32 holds out * in weights
            total += module.weight.size * 32 // module.bits * item
    for name, value in tree_flatten(model.parameters()):
        module, _, leaf = name.rpartition(".")
        if module in quantized:
            if leaf not in ("weight", "scales", "biases"):
                total += value.size * item
            continue
        total += value.size * item
    return total


def estimate_bytes(source: Any, *, training: bool = False, batch_size: int = 1, seq_len: int = 512,
                   lora_params: int = 0, dtype: str | None = None) -> int:
    """Peak bytes to hold ``source`` (a config dict, an MLX model, or a byte count of weights).

    training adds the LoRA state (weight, gradient and two Adam moments, float32 each), the
    activations kept for the backward pass and the (B, L, vocab) logits with their gradient.
    """
    config = source if _is_config(source) else getattr(source, "args", None)
    if isinstance(source, (int, float)):
        weights = int(source)
    else:
        weights = weight_bytes(source, dtype)
    if not training:
        return int(weights * 1.05)
    total = weights + 16 * int(lora_params)
    act = _ITEMSIZE.get(dtype or "float32", 4)
    cfg = _config_dict(config)
    if cfg:
        hidden = int(cfg["hidden_size"])
        layers = int(cfg["num_hidden_layers"])
        inter = int(cfg.get("intermediate_size") or 4 * hidden)
        heads = int(cfg.get("num_attention_heads") or 1)
        vocab = int(cfg.get("vocab_size") or 32000)
        tokens = batch_size * seq_len
        # Per layer, what autograd keeps: ~12 hidden-sized tensors (norms, q/k/v/o, residuals),
        # ~4 intermediate-sized ones (gate, up, activation, product) and the attention
        # probabilities (B, heads, L, L).
        per_layer = tokens * (12 * hidden + 4 * inter) * act + batch_size * heads * seq_len ** 2 * act
        logits = 3 * tokens * vocab * 4  # logits, log-softmax and their gradient, float32
        total += layers * per_layer + logits
    return int(total * 1.1)


def _config_dict(config) -> dict | None:
    if config is None:
        return None
    if _is_config(config):
        return config.get("text_config", config)
    try:
        return dict(vars(config))
    except TypeError:
        return None


def available_bytes() -> tuple[int | None, str]:
    """(bytes this process can still use, how that was measured); (None, reason) if unknown."""
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True,
                                 timeout=5).stdout.strip()
            # Unified memory: the GPU may use most of it; report the total, as Activity Monitor does.
            return int(out), "total memory (sysctl hw.memsize)"
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    avail, how = None, ""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail, how = int(line.split()[1]) * 1024, "available memory (/proc/meminfo)"
                break
    limit = _cgroup_headroom()
    if limit is not None and (avail is None or limit < avail):
        avail, how = limit, "memory left under this container's cgroup limit"
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            how = "available physical pages (sysconf)"
        except (ValueError, OSError, AttributeError):
            return None, "unknown on this platform"
    return avail, how


def _cgroup_headroom() -> int | None:
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            raw = Path(limit_file).read_text().strip()
            if raw == "max" or int(raw) >= 1 << 60:
                return None
            return int(raw) - int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
    return None


def check_memory(source: Any = None, *, needed: int | None = None, what: str = "loading the model",
                 **estimate_kwargs) -> bool:
    """Warn with one stderr line when ``needed`` bytes (or ``estimate_bytes(source, ...)``) will
    not fit in the memory available; returns whether it fits (True when unknown)."""
    if needed is None:
        needed = estimate_bytes(source, **estimate_kwargs)
    avail, how = available_bytes()
    if avail is None or needed <= avail:
        return True
    print(f"[mlx-text2sql] warning: {what} needs about {needed / GB:.1f} GB but only "
          f"{avail / GB:.1f} GB is free ({how}); expect swapping or an out-of-memory kill. "
          "A smaller model, --quantize, a smaller batch or shorter sequences need less.",
          file=sys.stderr, flush=True)
    return False
