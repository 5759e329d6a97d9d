"""``mlx-text2sql <command> [options]``: one console script for every pipeline stage.

Each command is also ``python -m mlx_text2sql.<command>``; ``mlx-text2sql <command> --help``
shows its options.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "convert": "Convert WikiSQL / NSQL / sql-create-context / Spider data to chat JSONL",
    "train": "Fine-tune LoRA / QLoRA adapters",
    "fuse": "Merge adapters into the base model (and export GGUF)",
    "generate": "Generate SQL for a question over a schema or a SQLite database",
    "evaluate": "Execution accuracy, exact match and valid-SQL rate on a test set",
    "export": "Write an adapter for mlx_lm, PEFT / transformers, llama.cpp or Ollama",
    "serve": "A local HTTP server and web page: ask SQLite databases questions (OpenAI-compatible)",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: mlx-text2sql <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    lines += ["", "Run 'mlx-text2sql <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(__version__)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"mlx_text2sql.{command}")
    sys.argv[0] = f"mlx-text2sql {command}"
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
