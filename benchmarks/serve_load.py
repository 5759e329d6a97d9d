"""Load benchmark of ``mlx-text2sql serve``: C concurrent clients against the same requests
sent one at a time, and the latency of a question on a warm database.

    python benchmarks/serve_load.py                       # built-in model (or adapters/)
    python benchmarks/serve_load.py --adapter-path adapters --out benchmarks/results/serve.md

It starts the real command (``python -m mlx_text2sql.serve``) on a free 127.0.0.1 port, then:

1. cold: one question per table of the database, one at a time: each pays for its whole prompt
   (nothing of that table's schema is in the prefix cache yet);
2. sequential: N WikiSQL questions (``POST /v1/sql`` naming the question's table, as WikiSQL
   is asked), one at a time, on the now warm tables: the warm-database latency;
3. concurrent: the same N requests from C client threads at once.

It reports throughput (requests/s) of 3 over 2, p50/p95 latencies, errors (any non-200
answer), whether greedy replies under load equal the ones given alone, and the server's own
timings (prompt, decode). Only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def load_questions(paths: list[Path]) -> list[dict]:
    """Distinct (question, table) pairs of converted WikiSQL records."""
    out, seen = [], set()
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            key = (rec["question"], rec.get("table"))
            if rec.get("table") and key not in seen:
                seen.add(key)
                out.append({"question": rec["question"], "table": rec["table"]})
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads) so far; None off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(args, port: int, log_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mlx_text2sql.serve", "--host", "127.0.0.1", "--port", str(port),
           "--db", f"{args.db_name}={args.db}", "--log-level", "warning", "--max-queue", str(4 * args.clients),
           "--max-batch", str(args.clients), "--request-timeout", str(args.request_timeout),
           *(["--batch-window-ms", str(args.batch_window_ms)] if args.batch_window_ms is not None else [])]
    if args.model:
        cmd += ["--model", args.model]
    if args.adapter_path:
        cmd += ["--adapter-path", args.adapter_path]
    elif not args.model:
        cmd += ["--no-adapter"] if args.no_adapter else []
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    return proc


def wait_healthy(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 600) -> dict:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
        try:
            return httpx.get(url + "/health", timeout=2).json()
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit(f"the server did not answer /health within {timeout:.0f} s")


def ask(client, url: str, args, q: dict) -> dict:
    body = {"database": args.db_name, "question": q["question"], "tables": [q["table"]],
            "max_tokens": args.max_tokens, "max_rows": 20}
    t = time.perf_counter()
    try:
        r = client.post(url + "/v1/sql", json=body, timeout=600)
        latency = time.perf_counter() - t
        if r.status_code != 200:
            return {"ok": False, "latency": latency, "error": f"{r.status_code} {r.text[:200]}"}
        a = r.json()
        return {"ok": True, "latency": latency, "reply": a["reply"], "sql": a["sql"],
                "failed": a["error_kind"] is not None, "timings": a["timings"]}
    except Exception as e:  # a dropped connection counts as an error
        return {"ok": False, "latency": time.perf_counter() - t, "error": repr(e)}


def run_sequential(url: str, args, questions: list[dict]) -> tuple[list[dict], float]:
    import httpx

    with httpx.Client() as client:
        t = time.perf_counter()
        results = [ask(client, url, args, q) for q in questions]
        return results, time.perf_counter() - t


def run_concurrent(url: str, args, questions: list[dict]) -> tuple[list[dict], float]:
    import httpx

    clients = [httpx.Client() for _ in range(args.clients)]
    try:
        with cf.ThreadPoolExecutor(args.clients) as pool:
            t = time.perf_counter()
            futures = [pool.submit(ask, clients[i % args.clients], url, args, q) for i, q in enumerate(questions)]
            results = [f.result() for f in futures]
            return results, time.perf_counter() - t
    finally:
        for c in clients:
            c.close()


def summary(name: str, results: list[dict], wall: float | None = None, cpu: float | None = None) -> dict:
    ok = [r for r in results if r["ok"]]
    lat = [r["latency"] for r in ok]
    out = {"phase": name, "requests": len(results), "errors": len(results) - len(ok),
           "p50_s": pct(lat, 0.5), "p95_s": pct(lat, 0.95),
           "prompt_p50_s": pct([r["timings"]["prompt_s"] for r in ok], 0.5),
           "decode_p50_s": pct([r["timings"]["decode_s"] for r in ok], 0.5),
           "failed_queries": sum(r["failed"] for r in ok),
           "error_messages": sorted({r["error"] for r in results if not r["ok"]})[:5]}
    if wall is not None:
        out["wall_s"] = wall
        out["req_per_s"] = len(results) / wall
    if cpu is not None:
        # The server's CPU time: what the phase cost, whatever else the machine was doing.
        out["server_cpu_s"] = cpu
        out["server_cpu_s_per_req"] = cpu / len(results)
        if wall:
            out["server_cpu_share"] = cpu / wall  # cores the server got on average
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model spec (default: the adapter's base, else smollm2-135m)")
    p.add_argument("--adapter-path", default=None, help="adapter folder (default: none)")
    p.add_argument("--no-adapter", action="store_true", help="do not pick up adapters/ by default")
    p.add_argument("--db", default=str(ROOT / "data" / "sample.sqlite"))
    p.add_argument("--db-name", default="sample")
    p.add_argument("--questions", nargs="+", default=[str(ROOT / "data" / f) for f in ("test.jsonl", "valid.jsonl", "train.jsonl")],
                   help="JSONL records with 'question' and 'table' (WikiSQL as converted)")
    p.add_argument("--requests", type=int, default=32, help="requests per phase (default 32)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--max-tokens", type=int, default=64, help="reply limit (default 64)")
    p.add_argument("--request-timeout", type=float, default=3600,
                   help="the server's time limit per request (default 3600: a busy machine is measured, not refused)")
    p.add_argument("--batch-window-ms", type=float, default=None,
                   help="the server's collection window (default: serve's)")
    p.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = p.parse_args(argv)

    everything = load_questions([Path(q) for q in args.questions])
    if len(everything) < args.requests:
        raise SystemExit(f"only {len(everything)} questions with a table in {' '.join(args.questions)}; "
                         f"need {args.requests}")
    questions = everything[: args.requests]
    # Cold: for each table, another question about it, asked before the measured ones.
    cold_qs = {}
    for q in everything[args.requests:] + everything:
        cold_qs.setdefault(q["table"], q)
    cold_qs = [cold_qs[t] for t in dict.fromkeys(q["table"] for q in questions)]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"serve_load_{port}.log"
    load_before = os.getloadavg()
    proc = start_server(args, port, log_path)
    try:
        t = time.perf_counter()
        health = wait_healthy(url, proc, log_path)
        print(f"server up in {time.perf_counter() - t:.1f} s: {health['model']}", file=sys.stderr)
        c0 = cpu_seconds(proc.pid)
        cold, cold_wall = run_sequential(url, args, cold_qs)
        c1 = cpu_seconds(proc.pid)
        print(f"cold: {len(cold)} tables in {cold_wall:.1f} s", file=sys.stderr)
        seq, seq_wall = run_sequential(url, args, questions)
        c2 = cpu_seconds(proc.pid)
        print(f"sequential: {len(seq)} requests in {seq_wall:.1f} s", file=sys.stderr)
        health_before_conc = wait_healthy(url, proc, log_path)
        conc, conc_wall = run_concurrent(url, args, questions)
        c3 = cpu_seconds(proc.pid)
        print(f"concurrent ({args.clients} clients): {len(conc)} requests in {conc_wall:.1f} s", file=sys.stderr)
        health_after = wait_healthy(url, proc, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    load_after = os.getloadavg()
    same = sum(a["ok"] and b["ok"] and a["reply"] == b["reply"] for a, b in zip(seq, conc))
    def used(a, b):
        return None if a is None or b is None else b - a

    s_cold = summary("cold", cold, cold_wall, used(c0, c1))
    s_seq = summary("sequential", seq, seq_wall, used(c1, c2))
    s_conc = summary("concurrent", conc, conc_wall, used(c2, c3))
    result = {
        "model": health["model"], "clients": args.clients, "requests": args.requests, "max_tokens": args.max_tokens,
        "cold": s_cold, "sequential": s_seq, "concurrent": s_conc,
        "throughput_ratio": s_conc["req_per_s"] / s_seq["req_per_s"],
        "cpu_ratio": (s_seq["server_cpu_s"] / s_conc["server_cpu_s"]
                      if s_seq.get("server_cpu_s") and s_conc.get("server_cpu_s") else None),
        "identical_replies": same, "batches": health_after.get("batches"),
        "concurrent_batches": health_after.get("batches", 0) - health_before_conc.get("batches", 0),
        "prefix_cache": health_after.get("prefix_cache"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "load_before": load_before, "load_after": load_after,
        "command": "python benchmarks/serve_load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for name, s in (("cold", s_cold), ("sequential (warm)", s_seq), (f"{args.clients} concurrent", s_conc)):
        rate = f", {s['req_per_s']:.2f} req/s" if "req_per_s" in s else ""
        if s.get("server_cpu_s") is not None:
            rate += f", server CPU {s['server_cpu_s_per_req']:.2f} s/req ({s['server_cpu_share']:.2f} cores)"
        print(f"{name:>18}: p50 {s['p50_s']:.3f} s, p95 {s['p95_s']:.3f} s (prompt {s['prompt_p50_s']:.3f} s, "
              f"decode {s['decode_p50_s']:.3f} s){rate}, errors {s['errors']}", file=sys.stderr)
    print(f"throughput {result['throughput_ratio']:.2f}x (server CPU seconds: {result['cpu_ratio'] or float('nan'):.2f}x fewer); "
          f"identical greedy replies {same}/{len(seq)}", file=sys.stderr)
    errors = s_seq["errors"] + s_conc["errors"] + s_cold["errors"]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
