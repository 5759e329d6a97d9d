"""Throughput of our batched engine against a plain mlx_lm ``generate`` loop.

    python benchmarks/generate_throughput.py [data/test.jsonl] [--limit 64] [--batch-size 32]

Both run in this one process, on the same converted examples (the prompt each record's
``messages`` or ``question`` + ``schema`` give, exactly as ``generate`` and ``evaluate`` build
it), with the same model (default: the built-in SmolLM2-135M-Instruct, dequantized to dense
float32) and greedy decoding. Printed: queries/s and generated tokens/s of each, the speed-up,
how many replies are identical, and single-query latency (one question, nothing cached) of each.
Times are wall clock; CPU time is shown too, a steadier basis on a machine shared with other
work.
The baseline feeds mlx_lm the very token ids our engine uses, so any difference in output comes
from the decoding itself.

``--llamacpp-python PYTHON`` also runs benchmarks/peers/llamacpp_generate.py (llama-cpp-python on
the same model's GGUF, default the built-in SmolLM2 Q4_1 file, one query at a time, same
examples, same max tokens) with that interpreter, in its own process after ours, and prints its
queries/s and latency beside ours (``bash benchmarks/setup_peers.sh`` builds it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="?", default=str(ROOT / "data" / "test.jsonl"),
                   help="converted JSONL (default: the bundled data/test.jsonl)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--keep-quantized", action="store_true",
                   help="do not dequantize a quantized model (MLX's CPU quantized kernels are slow)")
    p.add_argument("--adapter-path", default=None, help="apply this LoRA adapter to the model")
    p.add_argument("--no-merge-adapter", action="store_true",
                   help="keep the LoRA layers separate (default: folded into the dense weights, for "
                        "ours and the baseline alike, as generate and evaluate do)")
    p.add_argument("--limit", type=int, default=64, help="examples to run (default 64)")
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--draft-tokens", type=int, default=4,
                   help="prompt-lookup guesses verified per greedy step (0: off)")
    p.add_argument("--no-host-math", action="store_true",
                   help="keep the engine's softmax and SwiGLU exponentials in MLX (default on the CPU: NumPy)")
    p.add_argument("--latency-runs", type=int, default=5, help="single-query repetitions (default 5)")
    p.add_argument("--skip-baseline", action="store_true", help="time our engine only")
    p.add_argument("--llamacpp-python", default=None, metavar="PYTHON",
                   help="interpreter with llama-cpp-python: also run the llama.cpp peer")
    p.add_argument("--gguf", default=None, help="GGUF file for the llama.cpp peer (default: built-in SmolLM2 Q4_1)")
    return p.parse_args(argv)


def load(args):
    kw = dict(dtype=args.dtype, dequantize=not args.keep_quantized)
    if args.adapter_path:
        from mlx_text2sql.tuner.lora import load_with_adapter

        return load_with_adapter(args.adapter_path, model=args.model, merge=not args.no_merge_adapter, **kw)
    from mlx_text2sql.models import load_model

    return load_model(args.model, **kw)


def main(argv=None) -> int:
    from mlx_text2sql.blas import blas_status, ensure_fast_blas

    ensure_fast_blas()
    args = parse_args(argv)
    from mlx_lm import generate as mlx_generate

    from mlx_text2sql.engine import SQLGenerator
    from mlx_text2sql.jsonl import read_jsonl
    from mlx_text2sql.prompts import record_messages

    records = read_jsonl(args.input)[: args.limit]
    if not records:
        print(f"error: no records in {args.input}", file=sys.stderr)
        return 2
    prompts = [record_messages(r) for r in records]
    lm = load(args)
    print(f"model {args.model} ({args.dtype}), {len(prompts)} prompts from {args.input}; {blas_status()}")

    engine = SQLGenerator(lm, draft_tokens=args.draft_tokens, host_math=False if args.no_host_math else None)
    ids = [engine.prompt_tokens(p) for p in prompts]
    n_tables = len({r.get("table") or r.get("db_id") or r.get("schema") for r in records})
    print(f"prompt tokens: mean {statistics.mean(map(len, ids)):.0f}, max {max(map(len, ids))}; "
          f"{n_tables} distinct schemas; engine exponentials: "
          f"{'NumPy (host math)' if engine.uses_host_math() else 'MLX'}")

    def cut(text: str) -> str:
        for s in engine.stop:
            if s in text:
                text = text[: text.index(s)]
        return text

    # Warm-up (first calls compile kernels and allocate buffers), nothing cached afterwards.
    engine.generate([ids[0]], max_tokens=4)
    mlx_generate(lm.model, lm.tokenizer, ids[0], max_tokens=4)
    engine.store.clear()

    # Single-query latency: a fresh question each time, nothing in the prefix store; the two
    # sides alternate so that a change in the machine's load hits both alike.
    lat_ours, lat_base = [], []
    for i in range(min(args.latency_runs, len(ids))):
        engine.store.clear()
        t = time.perf_counter()
        engine.generate([ids[i]], max_tokens=args.max_tokens)
        lat_ours.append(time.perf_counter() - t)
        if not args.skip_baseline:
            t = time.perf_counter()
            mlx_generate(lm.model, lm.tokenizer, ids[i], max_tokens=args.max_tokens)
            lat_base.append(time.perf_counter() - t)

    def run_engine():
        engine.store.clear()
        engine.stats = type(engine.stats)()
        t, c = time.perf_counter(), time.process_time()
        out = engine.generate(ids, max_tokens=args.max_tokens, batch_size=args.batch_size)
        return out, time.perf_counter() - t, time.process_time() - c

    # Throughput: engine, baseline, engine again; the engine's figure is the mean of its two
    # runs, which bracket the baseline in time.
    ours, t1, c1 = run_engine()
    tok_ours = sum(r.n_tokens for r in ours)
    cached = sum(r.n_cached_tokens for r in ours) / max(1, sum(r.n_prompt_tokens for r in ours))
    print(f"  {engine.stats.summary()}")
    print(f"single-query latency, engine: {statistics.median(lat_ours):.3f} s (median of {len(lat_ours)})")
    if args.skip_baseline:
        print(f"engine (batch {args.batch_size}): {len(ids) / t1:.2f} queries/s, {tok_ours / t1:.1f} generated "
              f"tokens/s, {t1:.1f} s wall, {c1:.1f} s CPU; {cached:.0%} of prompt tokens from shared prefixes")
        return 0
    base_texts = []
    t, c = time.perf_counter(), time.process_time()
    for p in ids:
        base_texts.append(mlx_generate(lm.model, lm.tokenizer, p, max_tokens=args.max_tokens))
    t_base, c_base = time.perf_counter() - t, time.process_time() - c
    again, t2, c2 = run_engine()
    t_ours, c_ours = (t1 + t2) / 2, (c1 + c2) / 2
    assert [r.tokens for r in again] == [r.tokens for r in ours], "the engine is not deterministic"
    tok_base = sum(len(lm.tokenizer.encode(x, add_special_tokens=False)) for x in base_texts)
    same = sum(cut(b) == r.text for b, r in zip(base_texts, ours))
    print(f"engine (batch {args.batch_size}): {len(ids) / t_ours:.2f} queries/s, "
          f"{tok_ours / t_ours:.1f} generated tokens/s, {t1:.1f} s + {t2:.1f} s wall, {c_ours:.1f} s CPU; "
          f"{cached:.0%} of prompt tokens from shared prefixes")
    print(f"mlx_lm generate loop: {len(ids) / t_base:.2f} queries/s, "
          f"~{tok_base / t_base:.1f} generated tokens/s, {t_base:.1f} s wall, {c_base:.1f} s CPU")
    print(f"single-query latency, mlx_lm: {statistics.median(lat_base):.3f} s (median of {len(lat_base)})")
    print(f"speed-up: {t_base / t_ours:.2f}x queries/s (wall clock), {c_base / c_ours:.2f}x by CPU time; "
          f"latency {statistics.median(lat_base) / statistics.median(lat_ours):.2f}x; "
          f"identical replies: {same}/{len(ids)}")
    for b, r, rec in zip(base_texts, ours, records):
        if cut(b) != r.text:
            print(f"  differs ({rec.get('id', '?')}): mlx_lm {cut(b)[:80]!r} / engine {r.text[:80]!r}")
    if args.llamacpp_python:
        peer = llamacpp(args, len(ids))
        print(f"llama.cpp {peer['llama_cpp']} ({Path(peer['gguf']).name}, {peer['threads']} threads, one query at a "
              f"time): {peer['queries_per_s']:.2f} queries/s, latency mean {peer['mean_latency_s']:.3f} s / median "
              f"{peer['median_latency_s']:.3f} s; prefill {peer['prefill_tokens_per_s'] or 0:.0f} tok/s, decode "
              f"{peer['decode_tokens_per_s'] or 0:.0f} tok/s")
        print(f"ours vs llama.cpp: {len(ids) / t_ours / peer['queries_per_s']:.2f}x queries/s (batched engine), "
              f"single-query latency {statistics.median(lat_ours) / peer['median_latency_s']:.2f}x llama.cpp's")
    return 0


def llamacpp(args, n: int) -> dict:
    import json
    import os
    import subprocess

    cmd = [args.llamacpp_python, str(ROOT / "benchmarks" / "peers" / "llamacpp_generate.py"), "--data", args.input,
           "--limit", str(n), "--max-tokens", str(args.max_tokens), "--json"]
    if args.gguf:
        cmd += ["--gguf", args.gguf]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith("{")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"the llama.cpp peer failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(line)

if __name__ == "__main__":
    sys.exit(main())
