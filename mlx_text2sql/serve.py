"""``python -m mlx_text2sql.serve``: a local HTTP server and web page to ask SQLite databases
questions, with an OpenAI-compatible chat endpoint.

The model loads once; concurrent requests are decoded together by one batching worker; each
database's schema prefix is kept between questions (``--prefix-cache-mb``, least recently used
dropped), so a second question on a database pays only for its own tokens. Clients name
databases from the ``--db`` list; no path a client sends is ever opened. The server listens on
127.0.0.1 unless told otherwise, and refuses any other address without an API key.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import ConfigError, run_model_cli

EPILOG = """examples:
  # the bundled sample database with the trained adapter in adapters/ (else the built-in model)
  python -m mlx_text2sql.serve
  # then open http://127.0.0.1:8000/ , or:
  curl -s http://127.0.0.1:8000/v1/sql -H 'Content-Type: application/json' \\
       -d '{"database": "sample", "question": "who plays for serbia?"}'
  # several databases (NAME=FILE names one), reachable from other machines with a key
  MLX_TEXT2SQL_API_KEY=$(openssl rand -hex 16) python -m mlx_text2sql.serve --adapter-path adapters \\
      --db data/sample.sqlite --db shop=~/shop.sqlite --host 0.0.0.0
  # any OpenAI client:  OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY or anything")
"""

DEFAULT_DB = "data/sample.sqlite"
DEFAULT_ADAPTERS = "adapters"


def build_parser() -> argparse.ArgumentParser:
    from .cli_options import PREFIX_CACHE_MB, add_model_options
    from .server.limits import API_KEY_ENV, Limits

    d = Limits()
    p = argparse.ArgumentParser(prog="mlx-text2sql serve", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("model")
    add_model_options(m)
    m.add_argument("--no-adapter", action="store_true",
                   help=f"with no --adapter-path and no --model, do not pick up {DEFAULT_ADAPTERS}/ "
                        "(default: it is used when it holds an adapter)")
    m.add_argument("--served-model-name", default=None,
                   help="the model id /v1/models lists and chat completions name (default: the model's name)")
    m.add_argument("--prefix-cache-mb", type=float, default=PREFIX_CACHE_MB, metavar="MB",
                   help="memory for schema prefixes kept between requests, least recently used "
                        f"dropped first (default {PREFIX_CACHE_MB})")

    s = p.add_argument_group("server")
    s.add_argument("--db", action="append", default=None, metavar="[NAME=]FILE",
                   help=f"a SQLite database clients may ask about, named NAME (default: the file's stem); "
                        f"repeat for several (default: {DEFAULT_DB})")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; any other "
                        "address needs an API key)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    s.add_argument("--api-key", default=None,
                   help=f"key clients must send as 'Authorization: Bearer KEY' on /v1 routes "
                        f"(default: the {API_KEY_ENV} environment variable; none on 127.0.0.1)")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])

    lim = p.add_argument_group("limits")
    for flag, kind, default, text in (
        ("--max-queue", int, d.max_queue,
         f"requests waiting or decoding at once; more get 503 + Retry-After (default {d.max_queue})"),
        ("--max-batch", int, d.max_batch, f"requests decoded together (default {d.max_batch})"),
        ("--batch-window-ms", float, d.batch_window_s * 1000,
         f"how long to wait for more requests before decoding (default {d.batch_window_s * 1000:g})"),
        ("--request-timeout", float, d.timeout_s,
         f"seconds a request may wait and decode (default {d.timeout_s:g})"),
        ("--execute-timeout", float, d.execute_timeout_s,
         f"seconds one query may run on a database (default {d.execute_timeout_s:g})"),
        ("--max-tokens", int, d.max_tokens,
         f"the largest max_tokens a request may ask for (default {d.max_tokens})"),
        ("--default-max-tokens", int, d.default_max_tokens,
         f"max_tokens when a request does not say (default {d.default_max_tokens})"),
        ("--max-rows", int, d.max_rows, f"the most result rows a request may ask for (default {d.max_rows})"),
        ("--max-question-chars", int, d.max_question_chars,
         f"longest question (default {d.max_question_chars})"),
        ("--max-body-kb", float, d.max_body_bytes / 1024,
         f"largest request body in KiB (default {d.max_body_bytes / 1024:g})"),
    ):
        lim.add_argument(flag, type=kind, default=default, help=text)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_model_cli(_main, argv)


def resolve_api_key(args) -> str | None:
    from .server.limits import API_KEY_ENV

    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    if key is not None and not key.strip():
        raise ConfigError(f"the API key is empty (--api-key or {API_KEY_ENV}): give a non-empty key")
    return key.strip() if key is not None else None


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse a non-loopback address without an API key, saying how to give one."""
    from .server.limits import API_KEY_ENV, is_loopback

    if api_key is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} without an API key: anyone who can reach it could use the "
            f"model and read the databases. Give a key with --api-key KEY or the {API_KEY_ENV} "
            f"environment variable (clients then send 'Authorization: Bearer KEY'), or listen on "
            f"127.0.0.1 (the default)")


def default_adapter(args) -> str | None:
    """``--adapter-path``, else ``adapters/`` when it holds an adapter and no --model is given."""
    if args.adapter_path is not None:
        return args.adapter_path
    if args.model is None and not args.no_adapter:
        from .models.adapters import CONFIG_FILE

        if (Path(DEFAULT_ADAPTERS) / CONFIG_FILE).is_file():
            return DEFAULT_ADAPTERS
    return None


def limits_from_args(args):
    from .server.limits import Limits

    return Limits(max_body_bytes=int(args.max_body_kb * 1024), max_question_chars=args.max_question_chars,
                  max_tokens=args.max_tokens, default_max_tokens=min(args.default_max_tokens, args.max_tokens),
                  max_rows=args.max_rows, timeout_s=args.request_timeout, execute_timeout_s=args.execute_timeout,
                  max_queue=args.max_queue, max_batch=args.max_batch, batch_window_s=args.batch_window_ms / 1000)


def loopback_hosts(host: str, port: int) -> list[str] | None:
    """Host header values a loopback server accepts (None: any, for other addresses)."""
    from .server.limits import is_loopback

    if not is_loopback(host):
        return None
    return ["127.0.0.1", "localhost", "[::1]", host.lower()]


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    from .cli_options import prefix_cache_problems
    from .server.databases import DatabaseRegistry, parse_db_arg

    problems = []
    if not 0 <= args.port <= 65535:
        problems.append("--port must be in 0..65535")
    problems += prefix_cache_problems(args)
    adapter = default_adapter(args)
    if adapter is not None and not Path(adapter).is_dir():
        problems.append(f"--adapter-path {adapter}: no such folder")
    limits = limits_from_args(args)
    problems += limits.problems()
    if problems:
        raise ConfigError(problems)
    api_key = resolve_api_key(args)
    check_bind(args.host, api_key)
    # Databases are checked before the model loads.
    databases = DatabaseRegistry([parse_db_arg(v) for v in (args.db or [DEFAULT_DB])])

    import time

    from .api import Text2SQL
    from .cli_options import load_kwargs
    from .server import create_app

    t = time.perf_counter()
    print(f"[serve] loading {args.model or 'the default model'}"
          + (f" + adapter {adapter}" if adapter else "") + " ...", file=sys.stderr, flush=True)
    service = Text2SQL.load(**{**load_kwargs(args), "adapter_path": adapter}, prefix_cache_mb=args.prefix_cache_mb)
    print(f"[serve] loaded {service.model_name} in {time.perf_counter() - t:.1f}s; databases: "
          + ", ".join(databases.names), file=sys.stderr, flush=True)
    app = create_app(service, databases, limits=limits, api_key=api_key,
                     model_id=args.served_model_name, allowed_hosts=loopback_hosts(args.host, args.port))
    import uvicorn

    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"[serve] http://{shown}:{args.port}/  (Ctrl-C stops)"
          + ("; /v1 routes need the API key" if api_key else ""), file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
