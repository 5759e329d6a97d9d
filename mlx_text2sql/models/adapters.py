"""Adapter folders: reading their config, applying them to a model, and loading a model with
its adapter for inference (generation, evaluation, the public API).

An adapter folder holds ``adapters.npz`` (the adapter tensors, named by the layer they belong
to) and ``adapter_config.json`` (base model spec, chat template, dtype, quantization, LoRA and
prompt settings, the training config): enough to rebuild the exact model from the folder
alone. mlx_lm's adapter folders (``adapters.safetensors``) are read too. The LoRA layers
themselves (apply, fuse) are :mod:`mlx_text2sql.tuner.lora`'s; ``train`` writes the folders.

:func:`load_for_inference` picks the settings that make inference fast where it runs (on MLX's
CPU backend: dense float32 weights, since half-precision and quantized matmuls are slower
there) and otherwise keeps what the adapter was trained with. The adapter's LoRA layers come
from :func:`mlx_text2sql.tuner.lora.load_with_adapter`, folded into a dense base by default.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

from ..errors import AdapterError, ConfigError
from .load import DTYPES

ADAPTER_FILE = "adapters.npz"
CONFIG_FILE = "adapter_config.json"
MLX_LM_ADAPTER_FILE = "adapters.safetensors"
FORMAT = "mlx-text2sql-adapter"


def inference_load_options(*, dtype: str | None = None, dequantize: bool | None = None,
                           chat_template: str | None = None) -> dict:
    """Keywords for :func:`~mlx_text2sql.models.load.load_model`: the ones given, and on the
    CPU float32 and dense weights where none is given."""
    from .load import default_train_dequantize

    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    kw: dict = {}
    on_cpu = default_train_dequantize(log_choice=False)
    if dtype:
        kw["dtype"] = dtype
    elif on_cpu:
        kw["dtype"] = "float32"  # float16/bfloat16 matmuls are slower than float32 on CPUs
    if dequantize is not None:
        kw["dequantize"] = dequantize
    elif on_cpu:
        kw["dequantize"] = True  # MLX's CPU quantized matmul is far slower than dense float32
    if chat_template:
        kw["chat_template"] = chat_template
    return kw


def load_for_inference(model: str | os.PathLike | None = None,
                       adapter_path: str | os.PathLike | None = None, *,
                       dtype: str | None = None, dequantize: bool | None = None,
                       chat_template: str | None = None, merge_adapter: bool = True,
                       log: Callable[[str], None] | None = None):
    """The model (+ adapter) for generation, as a :class:`~mlx_text2sql.models.load.LoadedModel`.

    model:         a model spec; None: the adapter's base model, else the built-in default.
    adapter_path:  an adapter folder written by ``train`` (or an mlx_lm adapter folder).
    merge_adapter: fold the adapter into a dense base's weights (same numbers, fewer
                   operations per layer); a quantized base keeps it separate.
    log:           receives one line saying what was loaded and how long it took.
    Raises :class:`~mlx_text2sql.errors.ModelError` / ``AdapterError`` naming what is wrong.
    """
    kw = inference_load_options(dtype=dtype, dequantize=dequantize, chat_template=chat_template)
    t = time.perf_counter()
    loaded = load_with_adapter(adapter_path, model=None if model is None else str(model),
                               merge=merge_adapter, **kw)
    if log is not None:
        adapter = f" + adapter {adapter_path}" if adapter_path else ""
        log(f"loaded {loaded.spec}{adapter} in {time.perf_counter() - t:.1f}s")
    return loaded


def read_adapter_config(adapter_dir: str | os.PathLike) -> dict:
    """Read an adapter folder's config, ours or mlx_lm's, normalised to our keys.

    Always present in the result: format, base_model, chat_template, dtype, dequantized,
    quantization, quantize, prompt, weights (file name inside the folder), lora{rank, alpha,
    scale, dropout, targets, num_layers, dora}. Raises AdapterError when the folder, the config
    or the weights file is missing, or the config is not valid JSON of a known shape.
    """
    adapter_dir = Path(adapter_dir)
    path = adapter_dir / CONFIG_FILE
    if not adapter_dir.is_dir():
        raise AdapterError(f"adapter folder not found: {adapter_dir}")
    if not path.is_file():
        raise AdapterError(f"{path} not found: is {adapter_dir} an adapter folder written by train?")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise AdapterError(f"{path}: corrupt adapter config ({e})") from None
    if not isinstance(raw, dict):
        raise AdapterError(f"{path}: expected a JSON object")
    try:
        if "lora" in raw and raw.get("format") == FORMAT:
            cfg = _normalise_ours(raw)
        elif "lora_parameters" in raw or "fine_tune_type" in raw:
            cfg = _normalise_mlx_lm(raw)
        else:
            raise AdapterError("neither an mlx-text2sql nor an mlx_lm adapter config")
    except AdapterError as e:
        raise AdapterError(f"{path}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise AdapterError(f"{path}: malformed adapter config ({type(e).__name__}: {e})") from None
    weights = adapter_dir / cfg["weights"]
    if not weights.is_file():
        raise AdapterError(f"adapter weights {weights} not found")
    return cfg


def _normalise_lora(lora: dict) -> dict:
    rank = int(lora["rank"])
    if rank < 1:
        raise AdapterError(f"LoRA rank must be >= 1 (got {rank})")
    if lora.get("scale") is not None:
        scale = float(lora["scale"])
        alpha = float(lora["alpha"]) if lora.get("alpha") is not None else scale * rank
    else:
        alpha = float(lora["alpha"])
        scale = alpha / rank
    targets = lora.get("targets")
    num_layers = lora.get("num_layers")
    if num_layers is not None and int(num_layers) < 0:
        num_layers = None
    return {
        "rank": rank,
        "alpha": alpha,
        "scale": scale,
        "dropout": float(lora.get("dropout") or 0.0),
        "targets": None if targets is None else [str(t) for t in targets],
        "num_layers": None if num_layers is None else int(num_layers),
        "dora": bool(lora.get("dora", False)),
    }


def _normalise_ours(raw: dict) -> dict:
    cfg = dict(raw)
    for key in ("base_model", "chat_template", "dtype", "quantization", "quantize", "prompt"):
        cfg.setdefault(key, None)
    cfg["dequantized"] = bool(cfg.get("dequantized", False))
    cfg["lora"] = _normalise_lora(raw["lora"])
    cfg["weights"] = raw.get("weights", ADAPTER_FILE)
    return cfg


def _normalise_mlx_lm(raw: dict) -> dict:
    kind = raw.get("fine_tune_type", "lora")
    if kind not in ("lora", "dora"):
        raise AdapterError(f"fine_tune_type {kind!r} is not an adapter (only lora and dora are)")
    params = dict(raw.get("lora_parameters") or {})
    num_layers = raw.get("num_layers", raw.get("lora_layers"))
    lora = _normalise_lora({
        "rank": params.get("rank", 8),
        "scale": params.get("scale", 20.0),
        "dropout": params.get("dropout", 0.0),
        "targets": params.get("keys"),
        "num_layers": num_layers,
        "dora": kind == "dora",
    })
    quant = raw.get("quantization")
    return {
        "format": "mlx_lm",
        "version": None,
        "base_model": raw.get("model"),
        "chat_template": None,
        "dtype": None,
        "dequantized": False,
        "quantization": quant,
        "quantize": None,
        "prompt": None,
        "lora": lora,
        "weights": MLX_LM_ADAPTER_FILE,
        "train": raw,
    }


def load_adapter(model, adapter_dir: str | os.PathLike) -> dict:
    """Apply LoRA layers to ``model`` as the adapter's config says and load its weights.

    Returns the normalised config. Raises AdapterError naming the layer and both shapes when a
    tensor does not fit (an adapter trained on another base model), or listing missing and
    unexpected tensor names.
    """
    import mlx.core as mx

    from ..tuner.lora import _blocks, adapter_weights, apply_lora

    cfg = read_adapter_config(adapter_dir)
    lora = cfg["lora"]
    blocks = _blocks(model)
    if lora["num_layers"] is not None and lora["num_layers"] > len(blocks):
        raise AdapterError(
            f"the adapter in {adapter_dir} adapts {lora['num_layers']} blocks but the model has only "
            f"{len(blocks)}: it was trained on a different base model ({cfg.get('base_model')})"
        )
    try:
        apply_lora(model, rank=lora["rank"], alpha=lora["alpha"], dropout=lora["dropout"],
                   targets=lora["targets"], num_layers=lora["num_layers"], dora=lora["dora"])
    except ConfigError as e:
        raise AdapterError(f"adapter {adapter_dir} does not fit this model: {e}") from None
    path = Path(adapter_dir) / cfg["weights"]
    try:
        loaded = mx.load(str(path))
    except Exception as e:  # mx.load raises RuntimeError/ValueError on corrupt files
        raise AdapterError(f"cannot read adapter weights {path}: {e}") from None
    expected = adapter_weights(model)
    problems = []
    for name in sorted(set(loaded) & set(expected)):
        if tuple(loaded[name].shape) != tuple(expected[name].shape):
            problems.append(f"{name}: adapter tensor has shape {tuple(loaded[name].shape)}, "
                            f"the model's layer needs {tuple(expected[name].shape)}")
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    if missing:
        problems.append(f"{len(missing)} adapter tensor(s) missing: {_names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s) that match no LoRA layer: {_names(unexpected)}")
    if problems:
        raise AdapterError(
            f"adapter {adapter_dir} does not fit the model (trained on {cfg.get('base_model')!r}?):\n  "
            + "\n  ".join(problems)
        )
    # Keep the model's dtype (an adapter saved in float32 applied to a bfloat16 model).
    model.load_weights([(k, v.astype(expected[k].dtype)) for k, v in loaded.items()], strict=False)
    mx.eval(model.parameters())
    return cfg


def _names(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_with_adapter(adapter_dir: str | os.PathLike | None = None, model: str | None = None,
                      merge: bool = False, **load_kw):
    """Load the base model an adapter was trained on, apply the adapter, and set eval mode.

    model: base model spec; defaults to the adapter config's ``base_model``.
    load_kw: :func:`mlx_text2sql.models.load.load_model` keywords (dtype, dequantize, quantize,
        group_size, chat_template); each defaults to what the adapter was trained with.
    merge: for inference, fold the adapter into the weights (``W + scale * (A B)^T``) when every
        adapted layer is dense, so a forward pass runs one matmul per linear layer instead of
        three and an add (about a third fewer operations for an all-layer adapter). Exact up to
        float rounding; a quantized base keeps the adapter separate (re-quantizing would round
        part of the update away).
    With no ``adapter_dir`` it loads the base model alone. Returns a ``LoadedModel`` whose
    ``adapter`` attribute holds the normalised adapter config (None without adapter) and
    ``adapter_merged`` whether it was folded in.
    """
    import mlx.nn as nn

    from ..tuner.lora import fuse_lora, lora_layers
    from .load import load_model

    cfg = read_adapter_config(adapter_dir) if adapter_dir is not None else None
    if cfg is not None:
        spec = model or cfg.get("base_model")
        if not spec:
            raise AdapterError(f"{adapter_dir}: the adapter config names no base model; pass one")
        load_kw.setdefault("chat_template", cfg.get("chat_template"))
        load_kw.setdefault("dtype", cfg.get("dtype"))
        load_kw.setdefault("dequantize", bool(cfg.get("dequantized")))
        quantize = cfg.get("quantize")
        if quantize and "quantize" not in load_kw:
            load_kw["quantize"] = int(quantize["bits"])
            load_kw.setdefault("group_size", int(quantize["group_size"]))
    else:
        spec = model
    loaded = load_model(spec, **load_kw)
    merged = False
    if cfg is not None:
        load_adapter(loaded.model, adapter_dir)
        if merge and all(not isinstance(layer.linear, nn.QuantizedLinear)
                         for _, layer in lora_layers(loaded.model)):
            fuse_lora(loaded.model)
            merged = True
    loaded.model.eval()
    loaded.adapter = cfg
    loaded.adapter_merged = merged
    return loaded
