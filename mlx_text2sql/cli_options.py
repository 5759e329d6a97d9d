"""Command-line options that ``generate`` and ``evaluate`` share, defined once.

Each ``add_*`` function adds one group of flags to a parser (or argument group); ``*_problems``
check them and name the flag in every message; :func:`load_kwargs` and :func:`ask_options`
turn the parsed flags into the typed settings of :mod:`mlx_text2sql.api`, so nothing below a
command's ``main`` sees an argparse Namespace.
"""

from __future__ import annotations

import argparse

from .api import AskOptions

DEFAULT_MAX_TOKENS = 160
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_GUIDED_TEMP = 0.7
DEFAULT_GUIDED_TOP_P = 0.95
PREFIX_CACHE_MB = 512


def add_model_options(p) -> None:
    """--model, --adapter-path, --chat-template, --dtype, --dequantize / --keep-quantized,
    --no-merge-adapter."""
    p.add_argument("--model", default=None,
                   help="model spec: smollm2-135m (built in), a folder, a .gguf file or a Hub id; "
                        "default: the adapter's base model, else smollm2-135m")
    p.add_argument("--adapter-path", default=None, help="LoRA adapter folder written by train")
    p.add_argument("--chat-template", default=None, help="override the chat template (registry name)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="weights dtype (default: float32 on CPU, else as trained/stored)")
    p.add_argument("--dequantize", action="store_true", default=None,
                   help="run a quantized model dense (default on CPU, where it is faster)")
    p.add_argument("--keep-quantized", dest="dequantize", action="store_false",
                   help="keep quantized layers quantized")
    p.add_argument("--no-merge-adapter", dest="merge_adapter", action="store_false", default=True,
                   help="keep the adapter's LoRA layers separate (default: a dense base gets the "
                        "adapter folded into its weights, the same numbers computed with fewer operations)")


def add_generation_options(p, *, batch_size: int, batch_size_help: str = "", seed: int | None = None) -> None:
    """--max-tokens, --temp, --top-p, --seed, --batch-size (defaults differ per command)."""
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                   help=f"longest reply in tokens (default {DEFAULT_MAX_TOKENS})")
    p.add_argument("--temp", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default 1: off)")
    p.add_argument("--seed", type=int, default=seed,
                   help="random seed for sampling" + (f" (default {seed})" if seed is not None else ""))
    p.add_argument("--batch-size", type=int, default=batch_size,
                   help=f"prompts decoded together (default {batch_size}{batch_size_help})")


def add_refine_options(p, *, fix_values_help: str, exec_guided_help: str) -> None:
    """--fix-values, --fix-names, --exec-guided N, --guided-temp, --guided-top-p; the three first get a
    sentence saying what the command does with them."""
    p.add_argument("--fix-values", action="store_true",
                   help="value repair (mlx_text2sql/repair.py): a predicted column = 'text' whose text is "
                        "no cell of that column but a near miss of one cell gets that cell's text"
                        + fix_values_help)
    p.add_argument("--fix-names", action="store_true",
                   help="name repair (mlx_text2sql/name_repair.py): a predicted table or column the database "
                        "does not have gets the database's name it most plausibly means (singer_name -> Name "
                        "in table singer), before value repair" + fix_values_help)
    p.add_argument("--constrain-names", action="store_true",
                   help="schema-constrained greedy decoding (mlx_text2sql/sql/constrain.py): at each step "
                        "the model's most likely token that keeps every table and column name of the query "
                        "one the database has, so a name it lacks is never written (greedy only)")
    p.add_argument("--constrained-retry", action="store_true",
                   help="a greedy query that raises an error on the database (after repair) is decoded once "
                        "more under the name constraint of --constrain-names, repaired, and replaced by that "
                        "query when it runs (mlx_text2sql/guided.py); not with --constrain-names, --vote or "
                        "--exec-guided")
    p.add_argument("--exec-guided", type=int, default=0, metavar="N",
                   help="execution-guided decoding (mlx_text2sql/guided.py): a greedy query that fails on "
                        "the database (an error, or no rows) is replaced by the result most of N sampled "
                        "replies agree on" + exec_guided_help + " (default 0: off)")
    p.add_argument("--vote", type=int, default=0, metavar="N",
                   help="self-consistency voting on every question: the greedy query and N sampled "
                        "replies run on the database and vote with their results (an empty result is an "
                        "answer, an error has no vote; for Spider-like data, where the right answer is "
                        "often empty); not with --exec-guided (default 0: off)")
    p.add_argument("--guided-temp", type=float, default=DEFAULT_GUIDED_TEMP,
                   help=f"sampling temperature of --exec-guided / --vote (default {DEFAULT_GUIDED_TEMP})")
    p.add_argument("--guided-top-p", type=float, default=DEFAULT_GUIDED_TOP_P,
                   help=f"nucleus sampling of --exec-guided / --vote (default {DEFAULT_GUIDED_TOP_P})")


def add_prefix_cache_option(p) -> None:
    p.add_argument("--prefix-cache-mb", type=float, default=PREFIX_CACHE_MB, metavar="MB",
                   help="memory for the prompt caches kept between batches, least recently used "
                        f"dropped first (default {PREFIX_CACHE_MB}); with --vote, --exec-guided or "
                        "--constrained-retry, one that holds a chunk's prompts (4096 for Spider) lets a "
                        "prompt decoded again start from its stored cache instead of being computed twice")


def engine_kwargs(args: argparse.Namespace) -> dict:
    """Keywords of :class:`~mlx_text2sql.engine.SQLGenerator` from the flags (for
    :meth:`mlx_text2sql.api.Text2SQL.load`)."""
    return {"prefix_cache_mb": args.prefix_cache_mb}


def prefix_cache_problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with ``--prefix-cache-mb`` (generate, evaluate, serve)."""
    mb = args.prefix_cache_mb
    return [] if mb >= 0 else [f"--prefix-cache-mb must be 0 or more (got {mb:g})"]


def add_timeout_option(p) -> None:
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help=f"seconds each query may run (default {DEFAULT_TIMEOUT_S:g})")


_FLAGS = {"timeout_s": "--timeout"}  # option fields whose flag is not the field's name


def generation_problems(args: argparse.Namespace, **fields) -> list[str]:
    """What is wrong with the generation and refinement flags (and ``fields``, other
    :class:`~mlx_text2sql.api.AskOptions` fields the command sets), each message naming its
    flag: the options' own checks, worded for the command line."""
    out = []
    for problem in ask_options(args, **fields).problems():
        field, rest = problem.split(" ", 1)
        out.append(f"{_FLAGS.get(field, '--' + field.replace('_', '-'))} {rest}")
    return out


def load_kwargs(args: argparse.Namespace) -> dict:
    """Keywords of :meth:`mlx_text2sql.api.Text2SQL.load` from the model flags."""
    return {"model": args.model, "adapter_path": args.adapter_path, "dtype": args.dtype,
            "dequantize": args.dequantize, "chat_template": args.chat_template,
            "merge_adapter": args.merge_adapter}


def ask_options(args: argparse.Namespace, **overrides) -> AskOptions:
    """The :class:`~mlx_text2sql.api.AskOptions` the generation and refinement flags give."""
    kw = dict(max_tokens=args.max_tokens, temp=args.temp, top_p=args.top_p, seed=args.seed,
              batch_size=args.batch_size, fix_values=args.fix_values, fix_names=args.fix_names,
              constrain_names=args.constrain_names, constrained_retry=args.constrained_retry,
              exec_guided=args.exec_guided, vote=args.vote,
              guided_temp=args.guided_temp, guided_top_p=args.guided_top_p, timeout_s=args.timeout)
    kw.update(overrides)
    return AskOptions(**kw)
