"""Export to a llama.cpp LoRA adapter GGUF, applied at run time to the base GGUF file:
``llama-cli -m BASE.gguf --lora lora-f16.gguf``, or Ollama's ``FROM BASE.gguf`` + ``ADAPTER``.

The file holds ``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha`` and
one pair of tensors per adapted weight, named after it: ``blk.3.attn_q.weight.lora_a`` (r, in)
and ``.lora_b`` (out, r) in NumPy order (ggml's ne is reversed), which are PEFT's A' = A^T and
B' = B^T; llama.cpp adds ``(alpha / r) * B' A' x``. The q/k projections' output rows are in
GGUF's interleaved-RoPE order, so their B' rows are permuted as the base weights were.

Only for an adapter whose base is a llama-family GGUF file (the one the runtime loads); DoRA has
no llama.cpp adapter form (export the fused model with ``--to gguf``).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConfigError, ModelError
from .source import Source, log

ADAPTER_NAME = "lora-{dtype}.gguf"


def lora_gguf_problems(source: Source) -> list[str]:
    from mlx_lm.tuner.lora import LoRALinear

    from ..tuner.lora import lora_layers

    problems = []
    if source.kind != "gguf":
        problems.append(f"the base model {source.spec} is not a GGUF file, and a llama.cpp adapter applies to one: "
                        "export the fused model with --to gguf instead")
    if source.settings.dora:
        problems.append("llama.cpp adapters have no DoRA form: export the fused model with --to gguf, "
                        "or --to mlx-lm / --to peft")
    elif any(type(m) is not LoRALinear for _, m in lora_layers(source.lm.model)):
        problems.append("mixture-of-experts LoRA layers have no llama.cpp adapter form: use --to gguf")
    return problems


def _gguf_tensor_name(name: str) -> str:
    from ..models.gguf import _LAYER_NAMES, _TOP_NAMES

    layer = {v: k for k, v in _LAYER_NAMES.items()}
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    gname = f"blk.{m.group(1)}.{layer[m.group(2)]}" if m and m.group(2) in layer else \
        {v: k for k, v in _TOP_NAMES.items()}.get(name)
    if gname is None:
        raise ModelError(f"no llama.cpp tensor name for the adapted layer {name}")
    return gname + ".weight"


def export_lora_gguf(source: Source, out: Path, final: Path, dtype: str = "f16", modelfile: bool = True) -> dict:
    """Write ``lora-<dtype>.gguf`` (+ an Ollama ``Modelfile``: FROM the base, ADAPTER this file)
    into ``out`` (a staging folder that becomes ``final``)."""
    import gguf
    import numpy as np

    from ..models.gguf import permute_qk
    from ..tuner.lora import lora_layers
    from .peft import peft_tensors

    problems = lora_gguf_problems(source)
    if problems:
        raise ConfigError([f"cannot export {source.adapter_dir} as a llama.cpp adapter: {p}" for p in problems])
    config = source.lm.config
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    tensors = peft_tensors(source.lm.model)
    name = ADAPTER_NAME.format(dtype=dtype)
    writer = gguf.GGUFWriter(str(out / name), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(source.settings.scale * source.settings.rank))
    float_type = np.float16 if dtype == "f16" else np.float32
    for layer_name, _ in lora_layers(source.lm.model):
        a = tensors[f"base_model.model.{layer_name}.lora_A.weight"]  # (r, in)
        b = tensors[f"base_model.model.{layer_name}.lora_B.weight"]  # (out, r)
        if layer_name.endswith("q_proj"):
            b = permute_qk(b, heads)
        elif layer_name.endswith("k_proj"):
            b = permute_qk(b, kv_heads)
        gname = _gguf_tensor_name(layer_name)
        writer.add_tensor(f"{gname}.lora_a", np.ascontiguousarray(a, dtype=np.float32).astype(float_type))
        writer.add_tensor(f"{gname}.lora_b", np.ascontiguousarray(b, dtype=np.float32).astype(float_type))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    base = str(Path(source.lm.path).resolve())
    log(f"[export] wrote {name} ({len(tensors)} tensors) for the base {base}")
    result = {"files": [name], "base": base, "usage": f"llama-cli -m {base} --lora {final / name} --jinja -cnv"}
    if modelfile:
        from .gguf import MODELFILE, write_modelfile

        result["modelfile"] = write_modelfile(source, out, base, adapter=f"./{name}")
        result["files"].append(MODELFILE)
        result["usage"] += f"\n  ollama create text2sql -f {final / MODELFILE}"
    return result
