"""The adapter being exported: its config, the base model it was trained on, the LoRA layers."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AdapterError, ModelError

BASE_DIR = "base"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Source:
    """An adapter folder loaded onto its base model.

    lm: the ``LoadedModel`` with the LoRA layers in place (eval mode); cfg: the normalised
    adapter config (``read_adapter_config``); settings: the ``LoraSettings`` applied; kind and
    spec: how the base model was given (``resolve_spec`` kind: gguf, folder or hub).
    """

    adapter_dir: Path
    cfg: dict
    lm: Any
    settings: Any
    kind: str
    spec: str

    @property
    def n_blocks(self) -> int:
        return len(self.lm.model.layers)

    @property
    def needs_base_folder(self) -> bool:
        """Whether other tools need a base folder written for them: the base is a GGUF file, or
        the adapter was trained on a copy of the base that loading the spec does not give
        (quantized or dequantized for training, or a registry chat template attached)."""
        cfg = self.cfg
        return (self.kind == "gguf" or bool(cfg.get("quantize")) or bool(cfg.get("dequantized"))
                or bool(cfg.get("chat_template")))

    def base_reference(self) -> str:
        """How a config file names the base when no base folder is written: a folder's
        absolute path or a Hugging Face repo id."""
        if self.kind == "folder":
            return str(Path(self.spec).expanduser().resolve())
        return self.spec


def base_spec(adapter_dir: Path, cfg: dict, model: str | None) -> tuple[str, str]:
    """``(kind, spec)`` of the base model; ModelError naming the adapter and the fix when the
    recorded base cannot be found."""
    from ..models.load import resolve_spec

    spec = model or cfg.get("base_model")
    if not spec:
        raise AdapterError(f"{adapter_dir}/adapter_config.json names no base model; pass --model SPEC")
    try:
        kind, _ = resolve_spec(spec)
    except ModelError as e:
        where = "--model" if model else f"{adapter_dir}/adapter_config.json (base_model)"
        raise ModelError(f"the base model of adapter {adapter_dir} cannot be found: {spec!r} from {where}: "
                         f"{e} Pass --model PATH (a model folder, .gguf file or repo id) to name it.") from None
    return kind, str(spec)


def load_source(adapter_dir: str | os.PathLike, model: str | None = None, *, dtype: str | None = None) -> Source:
    """Read the adapter config, find its base model, load both (as ``generate`` does)."""
    from ..tuner.lora import load_with_adapter, lora_layers, lora_settings, read_adapter_config

    adapter_dir = Path(adapter_dir)
    cfg = read_adapter_config(adapter_dir)
    kind, spec = base_spec(adapter_dir, cfg, model)
    t = time.perf_counter()
    kw = {"dtype": dtype} if dtype else {}
    lm = load_with_adapter(adapter_dir, model=spec, **kw)
    settings = lora_settings(lm.model)
    n = len(lora_layers(lm.model))
    if settings is None or n == 0:
        raise AdapterError(f"the adapter in {adapter_dir} adds no LoRA layers to {spec}")
    log(f"[export] loaded {spec} + {adapter_dir} ({n} LoRA layers, rank {settings.rank}, "
        f"{'DoRA' if settings.dora else 'LoRA'}) in {time.perf_counter() - t:.1f}s")
    return Source(adapter_dir=adapter_dir, cfg=cfg, lm=lm, settings=settings, kind=kind, spec=spec)


def unwrap_lora(model) -> None:
    """Put every LoRA layer's base layer back in its place: the model becomes the base model."""
    from mlx.utils import tree_unflatten

    from ..tuner.lora import lora_layers

    base = [(name, layer.linear) for name, layer in lora_layers(model)]
    if base:
        model.update_modules(tree_unflatten(base))
    object.__setattr__(model, "_text2sql_lora", None)


def write_base_folder(source: Source, path: Path) -> Path:
    """Save the base model exactly as the adapter was trained on it (dtype, quantization, chat
    template) as a Hugging Face style folder. Removes the LoRA layers from ``source.lm``."""
    from ..models.save import save_model_folder

    t = time.perf_counter()
    unwrap_lora(source.lm.model)
    save_model_folder(source.lm.model, source.lm.tokenizer, source.lm.config, path)
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    log(f"[export] wrote the base model folder ({size / 2**20:.1f} MiB) in {time.perf_counter() - t:.1f}s")
    return path


def write_config_and_base(source: Source, out: Path, final: Path, with_base: bool, *,
                          adapter_file: str, n_tensors: int, config_file: str,
                          write_config) -> tuple[str, bool]:
    """The rest of an exported adapter folder ``out`` (staged for ``final``) once its weights
    (``adapter_file``, ``n_tensors`` tensors) are written: ``write_config(base_ref)`` writes
    ``config_file``, then ``base/`` is written when asked (``with_base``) or when the recorded
    base is not loadable as trained. Returns (base_ref, whether ``base/`` was written)."""
    write_base = with_base or source.needs_base_folder
    base_ref = str((final / BASE_DIR).resolve()) if write_base else source.base_reference()
    write_config(base_ref)
    log(f"[export] wrote {adapter_file} ({n_tensors} tensors) and {config_file}")
    if write_base:
        write_base_folder(source, out / BASE_DIR)
    return base_ref, write_base
