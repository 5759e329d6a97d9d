"""Checks that fusing a LoRA adapter into its base kept the adapter: each LoRA layer is run on a
probe input before fusing (:func:`probe_lora_layers`) and its fused replacement compared with it
afterwards (:func:`verify_fused`). Used by ``fuse`` and ``export``."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ModelError


@dataclass
class LayerCheck:
    """One LoRA layer's outputs on a probe input, before and after fusing."""

    name: str
    probe: object  # mx.array (4, in_dims)
    base: object  # the base layer's output
    adapted: object  # base + adapter output
    zero_update: bool


def probe_lora_layers(model, seed: int = 0) -> list[LayerCheck]:
    """Run every LoRA/DoRA linear layer (and its base) on a random probe input; keeps only the
    small outputs, not the weights."""
    import mlx.core as mx
    from mlx_lm.tuner.dora import DoRALinear
    from mlx_lm.tuner.lora import LoRALinear

    from .lora import lora_layers

    keys = iter(mx.random.split(mx.random.key(seed), max(2, len(lora_layers(model)))))
    checks = []
    for name, layer in lora_layers(model):
        if not isinstance(layer, (LoRALinear, DoRALinear)):
            continue  # mixture-of-experts layers need routing indices; checked for replacement only
        dtype = layer.lora_a.dtype
        x = mx.random.normal((4, layer.lora_a.shape[0]), key=next(keys)).astype(dtype)
        zero = not isinstance(layer, DoRALinear) and not bool(mx.any(layer.lora_b != 0).item())
        base, adapted = layer.linear(x), layer(x)
        mx.eval(x, base, adapted)
        checks.append(LayerCheck(name, x, base, adapted, zero))
    return checks


def verify_fused(model, checks: list[LayerCheck], n_lora: int) -> dict:
    """Compare every fused layer with what it replaced; raises ModelError when the adapter was
    (partly) lost or the merge is wrong. Returns a summary for the log and the info file."""
    import mlx.core as mx
    import mlx.nn as nn

    from .lora import lora_layers

    left = lora_layers(model)
    if left:
        raise ModelError(f"{len(left)} of {n_lora} LoRA layers were not fused (first: {left[0][0]})")
    modules = dict(model.named_modules())
    problems, lost_layers = [], []
    delta_sq = err_sq = 0.0
    for c in checks:
        layer = modules.get(c.name)
        if layer is None:
            problems.append(f"{c.name}: no layer at this path after fusing")
            continue
        y = layer(c.probe)
        norm = lambda a: float(mx.linalg.norm(a.astype(mx.float32)).item())  # noqa: E731
        if c.zero_update:
            if norm(y - c.base) != 0.0:
                problems.append(f"{c.name}: the adapter's update is zero but the fused layer differs from the base")
            continue
        delta = norm(c.adapted - c.base)  # what the adapter adds
        err = norm(y - c.adapted)  # what the fused layer gets wrong
        delta_sq += delta * delta
        err_sq += err * err
        if isinstance(layer, nn.QuantizedLinear):
            if norm(y - c.base) == 0.0:
                lost_layers.append(c.name)
        else:
            eps = float(mx.finfo(c.adapted.dtype).eps)
            if err > 0.05 * delta + 16 * eps * norm(c.adapted):
                problems.append(f"{c.name}: fused output is off by {err:.3g} (the adapter's update is {delta:.3g})")
    if problems:
        raise ModelError("fusing went wrong:\n  " + "\n  ".join(problems[:10]))
    lost = (err_sq / delta_sq) ** 0.5 if delta_sq > 0 else 0.0
    quantized = any(isinstance(m, nn.QuantizedLinear) for m in modules.values())
    if quantized and (lost_layers or lost > 0.5):
        what = (f"{len(lost_layers)} layer(s) lost their update entirely (first: {lost_layers[0]})"
                if lost_layers else f"{100 * lost:.0f}% of the adapter's update (by norm) was lost")
        raise ModelError(f"re-quantizing the fused weights rounded the adapter away: {what}. "
                         "Fuse with --dequantize to keep dense weights.")
    return {"lora_layers": n_lora, "probed": len(checks),
            "zero_update_layers": sum(c.zero_update for c in checks),
            "relative_error": lost, "quantized": quantized}
