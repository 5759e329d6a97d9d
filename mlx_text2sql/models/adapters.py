"""A model and its adapter, loaded for inference (generation, evaluation, the public API).

:func:`load_for_inference` picks the settings that make inference fast where it runs (on MLX's
CPU backend: dense float32 weights, since half-precision and quantized matmuls are slower
there) and otherwise keeps what the adapter was trained with. The adapter's LoRA layers come
from :func:`mlx_text2sql.tuner.lora.load_with_adapter`, folded into a dense base by default.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from ..errors import ConfigError
from .load import DTYPES


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
    from ..tuner.lora import load_with_adapter

    kw = inference_load_options(dtype=dtype, dequantize=dequantize, chat_template=chat_template)
    t = time.perf_counter()
    loaded = load_with_adapter(adapter_path, model=None if model is None else str(model),
                               merge=merge_adapter, **kw)
    if log is not None:
        adapter = f" + adapter {adapter_path}" if adapter_path else ""
        log(f"loaded {loaded.spec}{adapter} in {time.perf_counter() - t:.1f}s")
    return loaded
