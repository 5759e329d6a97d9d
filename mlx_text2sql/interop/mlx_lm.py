"""Export to mlx_lm: ``adapters.safetensors`` + mlx_lm's ``adapter_config.json``.

mlx_lm's ``load_adapters`` rebuilds the LoRA layers with ``linear_to_lora_layers(model,
num_layers, lora_parameters)``, which wraps the last ``num_layers`` blocks' modules whose
block-relative path is exactly one of ``keys`` (and model-level modules such as ``lm_head``
named in ``keys``), then loads the tensors by parameter path. Our adapters are made of the same
``LoRALinear`` / ``DoRALinear`` layers (``lora_a`` (in, r), ``lora_b`` (r, out), ``m``, and
``y = W x + scale * (x A) B``), so the tensors keep their names and shapes; the config carries
the resolved targets as keys, the scale (alpha / rank) and the block count.

When mlx_lm cannot load the base the adapter was trained on (see ``Source.needs_base_folder``)
the base is written as a model folder ``base/`` inside the output.
"""

from __future__ import annotations

from pathlib import Path

from ..jsonl import write_json
from .source import BASE_DIR, Source, write_config_and_base

ADAPTER_FILE = "adapters.safetensors"
CONFIG_FILE = "adapter_config.json"


def mlx_lm_config(source: Source, base_ref: str) -> dict:
    """mlx_lm's adapter_config.json for ``source`` (read by ``mlx_lm.tuner.utils.load_adapters``)."""
    s = source.settings
    cfg = source.cfg
    return {
        "fine_tune_type": "dora" if s.dora else "lora",
        "num_layers": s.num_layers if s.num_layers is not None else source.n_blocks,
        "lora_parameters": {"rank": s.rank, "scale": s.scale, "dropout": s.dropout, "keys": list(s.targets)},
        "model": base_ref,
        "mlx_text2sql": {"exported_from": str(source.adapter_dir), "base_model": source.spec,
                         "chat_template": cfg.get("chat_template"), "dtype": cfg.get("dtype"),
                         "prompt": cfg.get("prompt")},
    }


def export_mlx_lm(source: Source, out: Path, final: Path, with_base: bool = False) -> dict:
    """Write the mlx_lm adapter folder into ``out`` (a staging folder that becomes ``final``).

    with_base: write ``base/`` even when the recorded base spec would do. Returns a summary:
    the files written and the ``mlx_lm.generate`` command line that uses them.
    """
    import mlx.core as mx

    from ..tuner.lora import adapter_weights

    weights = adapter_weights(source.lm.model)
    mx.eval(list(weights.values()))
    mx.save_safetensors(str(out / ADAPTER_FILE), weights, metadata={"format": "mlx"})
    base_ref, write_base = write_config_and_base(
        source, out, final, with_base, adapter_file=ADAPTER_FILE, n_tensors=len(weights),
        config_file=CONFIG_FILE,
        write_config=lambda base_ref: write_json(out / CONFIG_FILE, mlx_lm_config(source, base_ref)))
    model_arg = str(final / BASE_DIR) if write_base else base_ref
    return {"files": sorted(p.name for p in out.iterdir()), "base": base_ref,
            "usage": f"mlx_lm.generate --model {model_arg} --adapter-path {final} --prompt ..."}
