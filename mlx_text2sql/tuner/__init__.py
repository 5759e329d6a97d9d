"""Fine-tuning on MLX: LoRA/DoRA/QLoRA adapters (:mod:`.lora`), training data (:mod:`.data`),
the training loop (:mod:`.trainer`) and its parts (:mod:`.loss`, :mod:`.step`, :mod:`.schedule`,
:mod:`.validation`, :mod:`.checkpoints`, :mod:`.runtime`), faster CPU math for it
(:mod:`.fastops`), reporting (:mod:`.callbacks`) and the loss plot (:mod:`.plot`).

Importing the package imports no MLX, so :mod:`.data` (NumPy and a tokenizer only) can be used
without it; the LoRA names below load :mod:`.lora`, and MLX with it, when first used.
"""

__all__ = ["apply_lora", "fuse_lora", "load_adapter", "load_with_adapter", "read_adapter_config",
           "save_adapter"]


def __getattr__(name: str):
    if name in __all__:
        from . import lora

        return getattr(lora, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
