"""LoRA / DoRA adapters on mlx_lm models: apply, save, read, load, fuse.

QLoRA is not a second code path: :func:`apply_lora` wraps ``nn.QuantizedLinear`` exactly as it
wraps ``nn.Linear`` (mlx_lm's ``LoRALinear``/``DoRALinear`` dequantize on the fly), so a model
loaded with ``--quantize 4`` or an already-quantized checkpoint trains through the same code.

An adapter folder holds ``adapters.npz`` (only the adapter tensors, named by the layer they
belong to, e.g. ``model.layers.3.self_attn.q_proj.lora_a``) and ``adapter_config.json`` (the base
model spec, chat template, dtype, quantization, LoRA settings, prompt settings and the full
training config), enough for :func:`mlx_text2sql.models.adapters.load_with_adapter` to rebuild the exact model from the folder
alone. mlx_lm's own adapter folders (``adapters.safetensors``) are read too.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear
from mlx_lm.tuner.dora import DoRALinear
from mlx_lm.tuner.lora import LoRALinear, LoRASwitchLinear

from ..errors import AdapterError, ConfigError
from ..jsonl import replace_with_plain_mode, write_json
# Reading and loading adapter folders lives with model loading (inference needs it outside the
# training package); the names stay importable from here.
from ..models.adapters import (ADAPTER_FILE, CONFIG_FILE, FORMAT, MLX_LM_ADAPTER_FILE,  # noqa: F401
                               _normalise_lora, _normalise_mlx_lm, _normalise_ours, load_adapter,
                               load_with_adapter, read_adapter_config)

# Leaf names of adapter tensors in mlx_lm's LoRA/DoRA layers ("m" is DoRA's magnitude vector).
ADAPTER_LEAVES = ("lora_a", "lora_b", "m")
# Layers apply_lora can wrap, and what it wraps them in (LoRA, DoRA).
_LINEAR = (nn.Linear, nn.QuantizedLinear)
_SWITCH = (SwitchLinear, QuantizedSwitchLinear)
LORA_TYPES = (LoRALinear, DoRALinear, LoRASwitchLinear)


@dataclass(frozen=True)
class LoraSettings:
    """What :func:`apply_lora` did to a model; recorded on the model and in adapter_config.json.

    targets: the block-relative module paths that were wrapped (e.g. ``self_attn.q_proj``),
    resolved from the requested targets, sorted. num_layers: None means every block.
    """

    rank: int
    alpha: float
    scale: float
    dropout: float
    targets: tuple[str, ...]
    num_layers: int | None
    dora: bool

    def to_dict(self) -> dict:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d


def _blocks(model) -> list:
    layers = getattr(model, "layers", None)
    if layers is None:
        raise AdapterError(f"{type(model).__name__} has no .layers (transformer blocks); cannot apply LoRA")
    return list(layers)


def _block_prefix(model) -> str:
    """The parameter-path prefix of the blocks ('model.layers' for llama-style models)."""
    first = _blocks(model)[0]
    for name, mod in model.named_modules():
        if mod is first:
            return name.rsplit(".", 1)[0]
    raise AdapterError("cannot locate the transformer blocks among the model's modules")


def _matches(rel: str, targets) -> bool:
    return any(rel == t or rel.endswith("." + t) for t in targets)


def lora_settings(model) -> LoraSettings | None:
    """The :class:`LoraSettings` recorded by :func:`apply_lora` / :func:`load_adapter`, or None."""
    return getattr(model, "_text2sql_lora", None)


def lora_layers(model) -> list[tuple[str, nn.Module]]:
    """``(path, layer)`` for every LoRA/DoRA layer in the model."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LORA_TYPES)]


def apply_lora(model, *, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               targets: list[str] | tuple[str, ...] | None = None, num_layers: int | None = None,
               dora: bool = False) -> int:
    """Freeze the base model and wrap targeted linear layers in LoRA (or DoRA) layers.

    rank, alpha: the update is ``(alpha / rank) * x A B`` with A (in, rank), B (rank, out); B
    starts at zero so the wrapped model computes exactly what the base did.
    targets: module names inside each transformer block, matched on the last path components
        ("q_proj" or "self_attn.q_proj"); a name outside the blocks (e.g. "lm_head") matches
        the model-level module of that path. None: every linear layer of the blocks (for
        llama/mistral: q, k, v, o, gate, up, down projections).
    num_layers: only the last N blocks; None (or -1) for all.
    Works on ``nn.Linear`` and ``nn.QuantizedLinear`` (QLoRA) alike. Returns the number of
    trainable parameters. Raises ConfigError for impossible settings (naming the valid choices).
    """
    if lora_settings(model) is not None or lora_layers(model):
        raise AdapterError("the model already has LoRA layers; load a fresh base model")
    blocks = _blocks(model)
    num_layers = None if num_layers is not None and num_layers < 0 else num_layers
    _check_settings(rank, alpha, dropout, num_layers, len(blocks))

    model.freeze()
    scale = float(alpha) / rank
    wrap = _wrapper(rank, dropout, scale, dora)
    wanted = None if targets is None else [str(t).strip(".") for t in targets]
    # Which block-relative linear paths exist (for matching and for error messages).
    available = _linear_paths(blocks)
    resolved = {rel for rel in available if wanted is None or _matches(rel, wanted)}
    for block in (blocks if num_layers is None else blocks[-num_layers:]):
        swaps = [(rel, wrap(mod)) for rel, mod in block.named_modules() if rel in resolved]
        if swaps:
            block.update_modules(tree_unflatten(swaps))
    matched = resolved | set(_wrap_outside_blocks(model, wanted, wrap))
    _check_matched(wanted, matched, available)

    settings = LoraSettings(rank=rank, alpha=float(alpha), scale=scale, dropout=float(dropout),
                            targets=tuple(sorted(matched)), num_layers=num_layers, dora=bool(dora))
    object.__setattr__(model, "_text2sql_lora", settings)
    return trainable_parameter_count(model)


def _check_settings(rank, alpha, dropout, num_layers: int | None, n_blocks: int) -> None:
    """Every impossible LoRA setting, in one ConfigError."""
    problems = []
    if not isinstance(rank, int) or rank < 1:
        problems.append(f"LoRA rank must be a positive integer (got {rank!r})")
    if not alpha or alpha <= 0:
        problems.append(f"LoRA alpha must be > 0 (got {alpha!r})")
    if not 0.0 <= dropout < 1.0:
        problems.append(f"LoRA dropout must be in [0, 1) (got {dropout!r})")
    if num_layers is not None and not 1 <= num_layers <= n_blocks:
        problems.append(f"LoRA layers must be between 1 and the model's {n_blocks} blocks (got {num_layers})")
    if problems:
        raise ConfigError(problems)


def _wrapper(rank: int, dropout: float, scale: float, dora: bool):
    """The function that wraps one linear (or mixture-of-experts) layer in its adapter layer."""
    def wrap(mod):
        if isinstance(mod, _SWITCH):
            if dora:
                raise ConfigError(f"DoRA does not support {type(mod).__name__} (mixture-of-experts) layers")
            return LoRASwitchLinear.from_base(mod, r=rank, dropout=dropout, scale=scale)
        cls = DoRALinear if dora else LoRALinear
        return cls.from_base(mod, r=rank, dropout=dropout, scale=scale)

    return wrap


def _linear_paths(blocks: list) -> set[str]:
    """The block-relative paths of every layer LoRA can wrap, over all blocks."""
    return {rel for block in blocks for rel, mod in block.named_modules() if isinstance(mod, _LINEAR + _SWITCH)}


def _wrap_outside_blocks(model, wanted: list[str] | None, wrap) -> list[str]:
    """Wrap the model-level targets outside the blocks (``lm_head``); returns their paths."""
    if not wanted:
        return []
    prefix = _block_prefix(model) + "."
    top = [(name, wrap(mod)) for name, mod in model.named_modules()
           if name in wanted and not name.startswith(prefix) and isinstance(mod, _LINEAR)]
    if top:
        model.update_modules(tree_unflatten(top))
    return [name for name, _ in top]


def _check_matched(wanted: list[str] | None, matched: set[str], available: set[str]) -> None:
    """Every requested target wrapped something, and something was wrapped at all."""
    if wanted is not None:
        unknown = [t for t in wanted if not any(_matches(rel, [t]) for rel in matched)]
        if unknown:
            raise ConfigError(
                f"LoRA target(s) {', '.join(unknown)} match no linear layer of the model; "
                f"its block layers are: {', '.join(sorted(available)) or 'none'}"
            )
    if not matched:
        raise ConfigError("no linear layer to apply LoRA to")


def trainable_parameter_count(model) -> int:
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


def adapter_weights(model) -> dict[str, mx.array]:
    """The adapter tensors of every LoRA/DoRA layer, by full parameter path."""
    out = {}
    for name, layer in lora_layers(model):
        for leaf in ADAPTER_LEAVES:
            if leaf in layer and isinstance(layer[leaf], mx.array):
                out[f"{name}.{leaf}"] = layer[leaf]
    return out


def _atomic_savez(path: Path, weights: dict[str, mx.array]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # mx.savez appends ".npz" to names without it, so the temp name must end in .npz.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.npz", dir=path.parent)
    os.close(fd)
    try:
        mx.savez(tmp, **weights)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        replace_with_plain_mode(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_adapter(model, adapter_dir: str | os.PathLike, config: dict) -> Path:
    """Write ``adapters.npz`` (adapter tensors only) and ``adapter_config.json``, each atomically.

    ``config`` carries what the trainer knows (base_model, chat_template, dtype, dequantized,
    quantization, prompt settings, the effective training config under ``train``); the LoRA
    settings are taken from the model itself. Returns the folder.
    """
    settings = lora_settings(model)
    if settings is None:
        raise AdapterError("the model has no LoRA layers to save (call apply_lora first)")
    from .. import __version__

    adapter_dir = Path(adapter_dir)
    weights = adapter_weights(model)
    mx.eval(weights)
    _atomic_savez(adapter_dir / ADAPTER_FILE, weights)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": __version__,
        "base_model": None,
        "chat_template": None,
        "dtype": None,
        "dequantized": False,
        "quantization": None,
        "quantize": None,
        "prompt": None,
    }
    doc.update(config)
    doc["lora"] = settings.to_dict()
    doc["weights"] = ADAPTER_FILE
    write_json(adapter_dir / CONFIG_FILE, doc)
    return adapter_dir


def fuse_lora(model, dequantize: bool = False, *, report: list | None = None):
    """Replace every LoRA/DoRA layer by one linear layer computing ``W + scale * (A B)^T``.

    Quantized bases are dequantized, merged and re-quantized with the same bits and group size
    (unless ``dequantize``, which leaves them dense). A layer whose adapter is exactly zero gets
    its base layer back unchanged, so fusing an untrained adapter changes nothing. Re-quantizing
    can round a small update away: when it loses more than half of the update (by norm, over
    all layers) a warning is printed; ``report`` (a list) receives one dict per layer with the
    update norm and the norm of what re-quantization lost. Returns the model.
    """
    fused = []
    lost_sq = delta_sq = 0.0
    for name, layer in lora_layers(model):
        if not isinstance(layer, DoRALinear) and not bool(mx.any(layer.lora_b != 0).item()):
            fused.append((name, layer.linear))  # a zero update: keep the base bit for bit
            continue
        new = layer.fuse(dequantize=dequantize)
        base = layer.linear
        if isinstance(base, nn.QuantizedLinear) and isinstance(new, nn.QuantizedLinear):
            before, after = _dense(base), _dense(new)
            wanted = _dense_fused(layer)
            d = float(mx.linalg.norm((wanted - before).astype(mx.float32)).item())
            e = float(mx.linalg.norm((wanted - after).astype(mx.float32)).item())
            delta_sq += d * d
            lost_sq += e * e
            if report is not None:
                report.append({"layer": name, "update_norm": d, "lost_norm": e})
        fused.append((name, new))
    if fused:
        model.update_modules(tree_unflatten(fused))
    if delta_sq > 0 and lost_sq > 0.25 * delta_sq:
        print(f"warning: re-quantizing the fused weights lost {100 * (lost_sq / delta_sq) ** 0.5:.0f}% of "
              "the adapter's update (by norm); fuse with dequantize to keep it", file=sys.stderr)
    mx.eval(model.parameters())
    object.__setattr__(model, "_text2sql_lora", None)
    return model


def _dense(linear) -> mx.array:
    if isinstance(linear, nn.QuantizedLinear):
        return mx.dequantize(linear.weight, linear.scales, linear.biases, group_size=linear.group_size,
                             bits=linear.bits, mode=linear.mode)
    return linear.weight


def _dense_fused(layer) -> mx.array:
    return layer.fuse(dequantize=True).weight
