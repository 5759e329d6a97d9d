"""Adapters and models that other tools read: mlx_lm, Hugging Face PEFT / transformers,
llama.cpp and Ollama.

- :mod:`.mlx_lm`: an adapter folder ``mlx_lm.load(base, adapter_path=...)`` loads, plus a base
  model folder when mlx_lm cannot load the base the adapter was trained on (a GGUF file, a
  base quantized or dequantized for training, a registry chat template).
- :mod:`.peft`: ``adapter_model.safetensors`` + ``adapter_config.json`` with Hugging Face module
  names, plus the base as a transformers folder.
- :mod:`.gguf`: the fused model as a GGUF file with an Ollama ``Modelfile`` (chat template,
  system prompt, stop strings) that renders exactly the prompt the adapter was trained on.
- :mod:`.llama_lora`: a llama.cpp LoRA adapter GGUF for a base that is a GGUF file.

Every export writes into a temporary folder beside the target and renames it into place at the
end (:mod:`.staging`), so a failed export leaves nothing half-written.
"""

FORMATS = ("mlx-lm", "peft", "gguf", "gguf-lora")
