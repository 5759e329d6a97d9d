"""Export to Hugging Face PEFT: ``adapter_model.safetensors`` + ``adapter_config.json``.

Our layer computes ``y = W x + scale * (x A) B`` with ``lora_a`` A (in, r) and ``lora_b`` B
(r, out). PEFT's ``lora.Linear`` computes ``y = W x + (lora_alpha / r) * B' (A' x)`` with
``lora_A.weight`` A' (r, in) and ``lora_B.weight`` B' (out, r), so A' = A^T, B' = B^T and
``lora_alpha = scale * r`` (our alpha), ``use_rslora`` off. Both give the weight update
``delta W = scale * B^T A^T`` of shape (out, in).

Tensor names are the module's Hugging Face path under PEFT's wrapper:
``base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight``. Targets are the adapted
modules' block-relative paths (PEFT matches a listed name against the end of each module
path); an adapter on the last N blocks only gets a regular expression naming those blocks.

DoRA layers also carry their magnitude vector ``m`` (out,) as ``lora_magnitude_vector`` with
``use_dora``: both tools scale the adapted layer's output rows by ``m / ||W + delta W||`` (row
norms), with no bias in llama-family projections.

PEFT has no layer for MLX's quantized weights, and transformers cannot read them: an adapter
trained over a quantized base (QLoRA) is refused, as are mixture-of-experts layers.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConfigError
from ..jsonl import write_json
from .source import BASE_DIR, Source, write_config_and_base

ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
PREFIX = "base_model.model."


def peft_problems(source: Source) -> list[str]:
    """Why this adapter cannot be written as a PEFT adapter (empty when it can)."""
    import mlx.nn as nn
    from mlx_lm.tuner.dora import DoRALinear
    from mlx_lm.tuner.lora import LoRALinear

    from ..tuner.lora import lora_layers

    problems = []
    quantized = [n for n, m in source.lm.model.named_modules()
                 if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))]
    if quantized:
        problems.append(
            f"the adapter was trained over a quantized base ({len(quantized)} quantized layers, e.g. "
            f"{quantized[0]}): transformers/PEFT cannot load MLX's quantized weights. Export --to mlx-lm "
            "or --to gguf, or retrain on a dense base (train --dequantize / without --quantize)")
    others = [n for n, m in lora_layers(source.lm.model) if type(m) not in (LoRALinear, DoRALinear)]
    if others:
        problems.append(f"{len(others)} LoRA layer(s) of a kind PEFT cannot represent (e.g. {others[0]}, "
                        "a mixture-of-experts layer); export --to mlx-lm instead")
    return problems


def peft_tensors(model) -> dict:
    """PEFT's tensors for every LoRA layer of ``model``, as NumPy float arrays by PEFT name."""
    import mlx.core as mx
    import numpy as np

    from ..tuner.lora import lora_layers

    out = {}
    for name, layer in lora_layers(model):
        a, b = layer.lora_a, layer.lora_b  # (in, r), (r, out)
        dtype = mx.float32 if a.dtype == mx.bfloat16 else a.dtype  # NumPy has no bfloat16
        out[f"{PREFIX}{name}.lora_A.weight"] = np.ascontiguousarray(np.array(a.astype(dtype)).T)
        out[f"{PREFIX}{name}.lora_B.weight"] = np.ascontiguousarray(np.array(b.astype(dtype)).T)
        if "m" in layer:  # DoRA magnitude (out,)
            out[f"{PREFIX}{name}.lora_magnitude_vector"] = np.array(layer.m.astype(dtype))
    return out


def target_modules(source: Source) -> list[str] | str:
    """PEFT's ``target_modules``: the block-relative paths (all blocks adapted), or a regular
    expression that PEFT full-matches against module paths (only the last N blocks adapted)."""
    from ..tuner.lora import lora_layers

    names = [n for n, _ in lora_layers(source.lm.model)]
    s = source.settings
    if s.num_layers is None or s.num_layers == source.n_blocks:
        return list(s.targets)
    return "|".join(re.escape(n) for n in sorted(names))


def peft_config(source: Source, base_ref: str) -> dict:
    """PEFT's adapter_config.json (a ``LoraConfig``) for ``source``."""
    s = source.settings
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_ref,
        "r": s.rank,
        "lora_alpha": s.scale * s.rank,
        "lora_dropout": s.dropout,
        "target_modules": target_modules(source),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": bool(s.dora),
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "inference_mode": True,
    }


def export_peft(source: Source, out: Path, final: Path, with_base: bool = False) -> dict:
    """Write the PEFT adapter folder into ``out`` (a staging folder that becomes ``final``).

    Raises ConfigError, before writing anything, when PEFT cannot represent the adapter."""
    from safetensors.numpy import save_file

    problems = peft_problems(source)
    if problems:
        raise ConfigError([f"cannot export {source.adapter_dir} to PEFT: {p}" for p in problems])
    tensors = peft_tensors(source.lm.model)
    save_file(tensors, str(out / ADAPTER_FILE), metadata={"format": "pt"})
    base_ref, _ = write_config_and_base(
        source, out, final, with_base, adapter_file=ADAPTER_FILE, n_tensors=len(tensors),
        config_file=CONFIG_FILE,
        write_config=lambda base_ref: write_json(out / CONFIG_FILE, peft_config(source, base_ref)))
    return {"files": sorted(p.name for p in out.iterdir()), "base": base_ref,
            "usage": f"PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({base_ref!r}), {str(final)!r})"}
