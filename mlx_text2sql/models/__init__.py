"""Model loading: Hugging Face / MLX folders and Hub ids through mlx_lm, GGUF files through
mx.load, and the offline default SmolLM2-135M-Instruct. See :func:`load_model`."""

from .load import DEFAULT_MODEL, LoadedModel, load_model, resolve_spec

__all__ = ["DEFAULT_MODEL", "LoadedModel", "load_model", "resolve_spec"]
