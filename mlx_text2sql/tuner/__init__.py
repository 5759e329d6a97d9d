"""Fine-tuning on MLX: LoRA/DoRA/QLoRA adapters (:mod:`.lora`), training data (:mod:`.data`),
the training loop (:mod:`.trainer`) and its parts (:mod:`.loss`, :mod:`.step`, :mod:`.schedule`,
:mod:`.validation`, :mod:`.checkpoints`, :mod:`.runtime`), faster CPU math for it
(:mod:`.fastops`), reporting (:mod:`.callbacks`) and the loss plot (:mod:`.plot`)."""

from .lora import (apply_lora, fuse_lora, load_adapter, load_with_adapter, read_adapter_config,
                   save_adapter)

__all__ = ["apply_lora", "fuse_lora", "load_adapter", "load_with_adapter", "read_adapter_config",
           "save_adapter"]
