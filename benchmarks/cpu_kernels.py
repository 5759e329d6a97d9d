"""The CPU costs the engine's and the trainer's design choices rest on, timed one by one.

    python benchmarks/cpu_kernels.py [--repeats 15] [--json]

- exponentials: ``mx.exp`` against NumPy's ``np.exp`` (why ``host_attention``/``host_swiglu``
  compute softmaxes and sigmoids in NumPy, and ``tuner.fastops`` has a polynomial ``exp``);
- decode attention: ``engine.decode_attention`` against ``mx.fast.scaled_dot_product_attention``
  at a batched decode step of SmolLM2-135M (9 query heads over 3 key/value heads, head size 64);
- matmul: a float32 product against MLX's 4-bit ``quantized_matmul`` of the same shape (why
  training and generation run a quantized model dense on the CPU);
- chat template: compiling a jinja template against rendering it (why compiled templates are
  cached).

Each figure is the median of ``--repeats`` timed runs after two warm-up runs. Importing
``mlx_text2sql`` first loads OpenBLAS under MLX, as every command does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlx_text2sql  # noqa: E402,F401  (loads OpenBLAS before MLX)


def median_s(fn, repeats: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def exponentials(repeats: int, n: int = 3_800_000) -> dict:
    import mlx.core as mx
    import numpy as np

    x_np = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    x_mx = mx.array(x_np)
    mx.eval(x_mx)
    return {"what": f"exp of {n:,} float32", "a": "mx.exp", "b": "np.exp",
            "a_s": median_s(lambda: mx.eval(mx.exp(x_mx)), repeats),
            "b_s": median_s(lambda: np.exp(x_np), repeats)}


def decode_attention(repeats: int, rows: int = 16, columns: int = 450) -> dict:
    import mlx.core as mx

    from mlx_text2sql.inference.engine import decode_attention as ours

    heads, kv_heads, dim = 9, 3, 64
    q = mx.random.normal((rows, heads, 1, dim), key=mx.random.key(0))
    k = mx.random.normal((rows, kv_heads, columns, dim), key=mx.random.key(1))
    v = mx.random.normal((rows, kv_heads, columns, dim), key=mx.random.key(2))
    mx.eval(q, k, v)
    scale = dim ** -0.5
    return {"what": f"attention, {rows} rows x 1 query x {columns} cached columns, {heads}/{kv_heads} heads",
            "a": "mx.fast.scaled_dot_product_attention", "b": "decode_attention",
            "a_s": median_s(lambda: mx.eval(mx.fast.scaled_dot_product_attention(q, k, v, scale=scale)), repeats),
            "b_s": median_s(lambda: mx.eval(ours(q, k, v, scale, None)), repeats)}


def quantized_matmul(repeats: int, rows: int = 24, d_in: int = 576, d_out: int = 1536) -> dict:
    import mlx.core as mx

    x = mx.random.normal((rows, d_in), key=mx.random.key(0))
    w = mx.random.normal((d_out, d_in), key=mx.random.key(1)) * 0.02
    wq, scales, biases = mx.quantize(w, group_size=64, bits=4)
    mx.eval(x, w, wq, scales, biases)
    return {"what": f"({rows} x {d_in}) by ({d_in} x {d_out})", "a": "4-bit quantized_matmul",
            "b": "float32 matmul",
            "a_s": median_s(lambda: mx.eval(mx.quantized_matmul(x, wq, scales, biases, transpose=True,
                                                                group_size=64, bits=4)), repeats),
            "b_s": median_s(lambda: mx.eval(x @ w.T), repeats)}


def chat_template(repeats: int) -> dict:
    import jinja2

    from mlx_text2sql.prompts import build_messages, get_template

    source = get_template("chatml").jinja
    env = jinja2.Environment(trim_blocks=False, lstrip_blocks=False, keep_trailing_newline=True)
    compiled = env.from_string(source)
    msgs = build_messages("How many singers are there?", 'CREATE TABLE "singer" ("name" TEXT, "age" INTEGER);',
                          "SELECT COUNT(*) FROM singer")
    return {"what": "the chatml template, one 3-message record", "a": "compile", "b": "render",
            "a_s": median_s(lambda: env.from_string(source), repeats),
            "b_s": median_s(lambda: compiled.render(messages=msgs, add_generation_prompt=False), repeats)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=15, help="timed runs per figure (default 15; median)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    results = [f(args.repeats) for f in (exponentials, decode_attention, quantized_matmul, chat_template)]
    for r in results:
        r["a_over_b"] = r["a_s"] / r["b_s"]
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print(f"{'what':<62} {'A':<38} {'A ms':>9} {'B':<22} {'B ms':>9} {'A/B':>6}")
    for r in results:
        print(f"{r['what']:<62} {r['a']:<38} {1e3 * r['a_s']:>9.3f} {r['b']:<22} {1e3 * r['b_s']:>9.3f} "
              f"{r['a_over_b']:>6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
