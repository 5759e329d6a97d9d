"""``python -m mlx_text2sql.fuse``: merge a LoRA adapter into its base model and save the result.

The base model is rebuilt exactly as the adapter was trained (model spec, dtype, dequantized or
quantized: all read from ``adapter_config.json``), the adapter applied, and every LoRA layer
replaced by one linear layer with ``W + scale * (A B)^T``. A quantized base is dequantized,
merged and re-quantized with its own bits and group size (``--dequantize`` keeps it dense).

The adapter is never dropped silently: before the folder is written, each fused layer is run
on a probe input and compared with the base + adapter layer it replaces. Every LoRA layer must
be gone, a zero update must leave the base bit for bit, a dense merge must reproduce base +
adapter, and a re-quantized merge must keep the update (an error, suggesting --dequantize,
when quantization rounds it away).

Writes a model folder (safetensors + config.json + tokenizer with its chat template) that
``mlx_lm.load``, ``generate --model`` and ``evaluate --model`` read, with
``mlx_text2sql_fuse.json`` beside it (the adapter's settings, so ``generate`` builds the
training prompt for the fused model too); ``--export-gguf`` also writes a GGUF file for
llama.cpp.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import ConfigError, ModelError, run_model_cli

FUSE_INFO = "mlx_text2sql_fuse.json"

EPILOG = """examples:
  python -m mlx_text2sql.fuse --adapter-path adapters --save-path fused
  python -m mlx_text2sql.generate --model fused --db data/sample.sqlite --question "..."
  # a quantized base kept quantized (default) or made dense, plus a GGUF for llama.cpp
  python -m mlx_text2sql.fuse --adapter-path adapters --save-path fused --dequantize --export-gguf
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlx-text2sql fuse", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter-path", default="adapters", help="adapter folder written by train (default: adapters)")
    p.add_argument("--model", default=None,
                   help="base model spec (default: the base_model recorded in adapter_config.json)")
    p.add_argument("--save-path", default="fused", help="output model folder (default: fused)")
    p.add_argument("--dequantize", action="store_true",
                   help="write a dense model even when the base model is quantized")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="cast the weights (default: the dtype the adapter was trained with)")
    p.add_argument("--export-gguf", nargs="?", const="", default=None, metavar="FILE",
                   help="also write a GGUF file (default FILE: <save-path>/model-<type>.gguf)")
    p.add_argument("--gguf-dtype", choices=["f16", "f32"], default="f16",
                   help="GGUF tensor type (default f16)")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_model_cli(_main, argv)


# --------------------------------------------------------------------------- main

def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    adapter = Path(args.adapter_path)
    save = Path(args.save_path)
    problems = []
    if not adapter.is_dir():
        problems.append(f"--adapter-path {adapter}: no such folder (train writes one; see --help)")
    if save.exists() and not save.is_dir():
        problems.append(f"--save-path {save} is a file; give a folder")
    if save.resolve() == adapter.resolve():
        problems.append("--save-path must differ from --adapter-path")
    if problems:
        raise ConfigError(problems)

    import mlx.core as mx

    from .jsonl import write_json
    from .models.save import save_model_folder
    from .tuner.fusecheck import probe_lora_layers, verify_fused
    from .tuner.lora import fuse_lora, lora_layers, load_with_adapter, read_adapter_config

    cfg = read_adapter_config(adapter)  # AdapterError (clear) before any model loads
    kw = {"dtype": args.dtype} if args.dtype else {}
    t = time.perf_counter()
    loaded = load_with_adapter(adapter, model=args.model, **kw)
    n_lora = len(lora_layers(loaded.model))
    if n_lora == 0:
        raise ModelError(f"the adapter in {adapter} added no LoRA layers to {loaded.spec}")
    print(f"[fuse] loaded {loaded.spec} + {adapter} ({n_lora} LoRA layers) in {time.perf_counter() - t:.1f}s",
          file=sys.stderr)

    checks = probe_lora_layers(loaded.model)
    fuse_lora(loaded.model, dequantize=args.dequantize)
    summary = verify_fused(loaded.model, checks, n_lora)
    print(f"[fuse] fused {n_lora} layers; {summary['zero_update_layers']} had a zero update; "
          f"fused vs base+adapter relative error {summary['relative_error']:.2e}"
          + (" (re-quantized)" if summary["quantized"] else ""), file=sys.stderr)

    config = dict(loaded.config)
    if args.dequantize:
        # The layers no adapter touched (embeddings, an untargeted lm_head) go dense too.
        from mlx_lm.utils import dequantize_model

        dequantize_model(loaded.model)
    if args.dequantize or not summary["quantized"]:
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    mx.eval(loaded.model.parameters())
    save_model_folder(loaded.model, loaded.tokenizer, config, save)
    write_json(save / FUSE_INFO, {
        "base_model": loaded.spec,
        "adapter_path": str(adapter),
        "adapter": {k: v for k, v in cfg.items() if k != "train"},
        "prompt": cfg.get("prompt"),
        "dequantize": bool(args.dequantize),
        "verification": summary,
    })
    print(f"[fuse] saved {save}", file=sys.stderr)

    if args.export_gguf is not None:
        from .models.gguf import export_gguf

        out = Path(args.export_gguf) if args.export_gguf else save / f"model-{args.gguf_dtype}.gguf"
        t = time.perf_counter()
        export_gguf(loaded.model, loaded.tokenizer, config, out, dtype=args.gguf_dtype)
        print(f"[fuse] wrote {out} ({out.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - t:.1f}s",
              file=sys.stderr)
    print(save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
