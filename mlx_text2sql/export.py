"""``python -m mlx_text2sql.export``: write an adapter in a form other tools read.

Formats (--to):
  mlx-lm  adapters.safetensors + mlx_lm's adapter_config.json, for mlx_lm.generate / mlx_lm.server
          (with a base/ model folder when mlx_lm cannot load the base the adapter was trained on,
          e.g. the built-in GGUF model)
  peft    adapter_model.safetensors + PEFT's adapter_config.json (Hugging Face module names), for
          transformers / PEFT / vLLM (with the base as a transformers folder in base/ when needed)
  gguf    the fused model as model-f16.gguf for llama.cpp, plus an Ollama Modelfile with the chat
          template, system prompt and stop strings the adapter was trained with
  gguf-lora  a llama.cpp LoRA adapter GGUF for a base that is a GGUF file (llama-cli --lora)

The output is written into a temporary folder beside --out and renamed into place at the end:
a failed export leaves nothing behind. An existing non-empty --out is replaced only with --force.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import ConfigError, run_model_cli
from .interop import FORMATS

EPILOG = """examples:
  python -m mlx_text2sql.export --adapter-path adapters --to mlx-lm --out export/mlx-lm
  mlx_lm.generate --model export/mlx-lm/base --adapter-path export/mlx-lm --prompt "..."
  python -m mlx_text2sql.export --adapter-path adapters --to peft --out export/peft
  python -m mlx_text2sql.export --adapter-path adapters --to gguf --out export/gguf
  ollama create text2sql -f export/gguf/Modelfile
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlx-text2sql export", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter-path", default="adapters", help="adapter folder written by train (default: adapters)")
    p.add_argument("--to", required=True, choices=FORMATS, help="output format (see above)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty, unless --force)")
    p.add_argument("--model", default=None,
                   help="base model spec (default: the base_model recorded in adapter_config.json)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--with-base", action="store_true",
                   help="mlx-lm/peft: always write the base model folder base/ (default: only when the "
                        "recorded base is not loadable as trained, e.g. a GGUF file)")
    p.add_argument("--gguf-dtype", choices=["f16", "f32"], default="f16", help="gguf, gguf-lora: tensor type (default f16)")
    p.add_argument("--no-modelfile", action="store_true", help="gguf, gguf-lora: do not write the Ollama Modelfile")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_model_cli(_main, argv)


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    adapter, out = Path(args.adapter_path), Path(args.out)
    from .interop.staging import staged_folder, target_problems

    problems = target_problems(out, args.force)
    if not adapter.is_dir():
        problems.append(f"--adapter-path {adapter}: no such folder (train writes one; see --help)")
    elif out.exists() and out.resolve() == adapter.resolve():
        problems.append("--out must differ from --adapter-path")
    if problems:
        raise ConfigError(problems)

    from .interop.source import load_source

    t = time.perf_counter()
    source = load_source(adapter, model=args.model)
    with staged_folder(out, force=args.force) as tmp:
        if args.to == "mlx-lm":
            from .interop.mlx_lm import export_mlx_lm

            summary = export_mlx_lm(source, tmp, out, with_base=args.with_base)
        elif args.to == "peft":
            from .interop.peft import export_peft

            summary = export_peft(source, tmp, out, with_base=args.with_base)
        elif args.to == "gguf-lora":
            from .interop.llama_lora import export_lora_gguf

            summary = export_lora_gguf(source, tmp, out, dtype=args.gguf_dtype, modelfile=not args.no_modelfile)
        else:
            from .interop.gguf import export_gguf_folder

            summary = export_gguf_folder(source, tmp, out, dtype=args.gguf_dtype, modelfile=not args.no_modelfile)
    print(f"[export] {args.to}: wrote {out} ({', '.join(summary['files'])}) in {time.perf_counter() - t:.1f}s",
          file=sys.stderr)
    print(f"[export] use it: {summary['usage']}", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
