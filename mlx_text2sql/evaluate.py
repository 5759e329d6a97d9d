"""``python -m mlx_text2sql.evaluate``: execution accuracy of a model (+ adapter) on a test set.

For every record of a converted JSONL file: build the prompt with the same prompt module as
training, generate (batched), extract the SQL, run predicted and gold SQL read-only on the
record's database, and compare the results (rules in :mod:`mlx_text2sql.metrics`).

Prints a summary table (execution accuracy, exact match, valid-SQL rate, by source and by Spider
hardness, queries/s, latency) and ends with the machine-readable line
``execution_accuracy: 0.xxx``. ``--output`` keeps one JSON line per example (question, gold,
predicted, raw reply, error, match) so the failures can be read; it is written as the run goes,
so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import ConfigError, InputError, run_cli

EPILOG = """examples:
  # score the gold SQL against itself (checks the data and the executor; no model)
  python -m mlx_text2sql.evaluate --data data/test.jsonl --gold
  # the adapter trained by `python -m mlx_text2sql.train`, against its base model
  python -m mlx_text2sql.evaluate --adapter-path adapters --data data/test.jsonl --compare-base
  # a model from the Hub on 200 converted WikiSQL examples, failures kept for reading
  python -m mlx_text2sql.evaluate --model mlx-community/TinyLlama-1.1B-Chat-v1.0-4bit \\
      --data wikisql/test.jsonl --limit 200 --output predictions.jsonl
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlx-text2sql evaluate", description=__doc__.split("\n\n")[0],
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True,
                   help="converted JSONL file, or a folder holding test.jsonl")
    p.add_argument("--model", default=None,
                   help="model spec (smollm2-135m, a folder, a .gguf file or a Hub id); "
                        "default: the adapter's base model, else smollm2-135m")
    p.add_argument("--adapter-path", default=None, help="adapter folder written by train")
    p.add_argument("--gold", action="store_true",
                   help="score the gold SQL against itself instead of a model")
    p.add_argument("--compare-base", action="store_true",
                   help="also score the base model without the adapter, in the same run")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N records")
    p.add_argument("--sample", type=int, default=None, metavar="N",
                   help="evaluate a random sample of N records (drawn with --seed, kept in file order), "
                        "e.g. a quick estimate over every database of Spider dev")
    p.add_argument("--output", default=None,
                   help="per-example results (JSONL); written as they are scored, to OUTPUT.partial "
                        "until the run ends (an interrupted run keeps what it scored)")
    p.add_argument("--resume", action="store_true",
                   help="with --output: take the results an interrupted run left in OUTPUT.partial "
                        "and generate only the rest")
    p.add_argument("--fix-values", action="store_true",
                   help="value repair (mlx_text2sql/repair.py): a predicted column = 'text' whose text "
                        "is no cell of that column but a near miss of one cell gets that cell's text; "
                        "the accuracy without it is reported too")
    p.add_argument("--exec-guided", type=int, default=0, metavar="N",
                   help="execution-guided decoding (mlx_text2sql/guided.py): a greedy query that fails on "
                        "the database (an error, or no rows) is replaced by the result most of N "
                        "sampled replies agree on; the accuracy without it is reported too (default 0: off)")
    p.add_argument("--guided-temp", type=float, default=0.7,
                   help="sampling temperature of --exec-guided (default 0.7)")
    p.add_argument("--guided-top-p", type=float, default=0.95,
                   help="nucleus sampling of --exec-guided (default 0.95)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="prompts decoded together (default 32; on SmolLM2-135M on a 2-core CPU, 32 rows "
                        "give ~1.1x the queries/s of 16; lower it for a 7B model on a small Mac)")
    p.add_argument("--max-tokens", type=int, default=160, help="longest reply in tokens (default 160)")
    p.add_argument("--temp", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds each query may run (default 5)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None)
    p.add_argument("--dequantize", action="store_true", default=None,
                   help="run quantized models dense (default on Linux CPU, where it is faster)")
    p.add_argument("--keep-quantized", dest="dequantize", action="store_false",
                   help="keep quantized layers quantized")
    p.add_argument("--no-merge-adapter", dest="merge_adapter", action="store_false", default=True,
                   help="keep the adapter's LoRA layers separate (default: a dense base gets the "
                        "adapter folded into its weights, the same numbers computed with fewer operations)")
    p.add_argument("--chat-template", default=None, help="override the chat template (registry name)")
    p.add_argument("--strict", action="store_true", help="stop at the first malformed JSONL line")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def resolve_data(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        for name in ("test.jsonl", "valid.jsonl"):
            if (p / name).is_file():
                return p / name
        raise InputError("folder has no test.jsonl (or valid.jsonl)", str(p))
    if not p.is_file():
        raise InputError("file not found", str(p))
    return p


def load_records(path: Path, limit: int | None, strict: bool) -> tuple[list[dict], list[InputError]]:
    from .jsonl import iter_jsonl

    problems: list[InputError] = []
    records = []
    for lineno, rec in iter_jsonl(path, strict=strict, problems=problems):
        if not isinstance(rec.get("sql"), str) or not rec["sql"].strip():
            err = InputError("record has no gold 'sql' string", str(path), lineno)
            if strict:
                raise err
            problems.append(err)
            continue
        if "messages" not in rec and not ("question" in rec and "schema" in rec):
            err = InputError("record has neither 'messages' nor 'question' + 'schema'", str(path), lineno)
            if strict:
                raise err
            problems.append(err)
            continue
        rec.setdefault("id", f"{path.name}:{lineno}")
        records.append(rec)
        if limit is not None and len(records) >= limit:
            break
    return records, problems


def result_key(rec: dict, label: str) -> str:
    """What identifies one example's result across runs: the model label, id and question."""
    return json.dumps([label, rec.get("id"), rec.get("question")], ensure_ascii=False)


class _Writer:
    """Writes per-example results as they come to ``PATH.partial``; renamed to PATH at the end.

    With ``resume``, the results already in ``PATH.partial`` are read first (``done``: key ->
    result) and kept at the head of the file; a torn last line (the run died mid-write) is
    dropped."""

    def __init__(self, path: str | None, resume: bool = False):
        self.path = Path(path) if path else None
        self.f = None
        self.done: dict[str, dict] = {}
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.partial = self.path.with_name(self.path.name + ".partial")
            kept = []
            if resume and self.partial.is_file():
                for line in self.partial.read_text(encoding="utf-8").splitlines():
                    try:
                        r = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(r, dict) and "model" in r:
                        self.done[result_key(r, r["model"])] = r
                        kept.append(line)
            self.f = open(self.partial, "w", encoding="utf-8")
            for line in kept:
                self.f.write(line + "\n")
            self.f.flush()

    def write(self, rec: dict) -> None:
        if self.f:
            self.f.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
            self.f.flush()

    def close(self, ok: bool) -> None:
        if self.f:
            self.f.close()
            if ok:
                self.partial.replace(self.path)


def score_predictions(records, predictions, base_dir, *, timeout_s, label, writer, replies=None,
                      latencies=None, repairer=None, choices=None):
    """Evaluate ``predictions[i]`` (SQL text) against ``records[i]``; returns per-example dicts.

    With a :class:`~mlx_text2sql.repair.Repairer`, each prediction is value-repaired first; a
    changed one also records ``pred_sql_raw``, ``value_fixes`` and ``match_raw`` (the raw
    prediction's score). With ``choices`` (execution-guided decoding, :mod:`.guided`), a
    prediction the guide replaced is scored as replaced, and also records ``pred_sql_greedy``
    and ``match_greedy`` (the greedy query's score); every retried one records ``guided``."""
    from .metrics import _resolve_db, evaluate_prediction

    results = []
    for i, (rec, pred) in enumerate(zip(records, predictions)):
        fixes = []
        raw = pred
        if repairer is not None:
            pred, fixes = repairer.fix(pred, _resolve_db(rec, base_dir), rec.get("question") or "")
        choice = choices[i] if choices is not None else None
        if choice is not None and choice.changed:
            r = evaluate_prediction(rec, choice.sql, base_dir=base_dir, timeout_s=timeout_s)
            r["pred_sql_greedy"] = pred
            r["match_greedy"] = evaluate_prediction(rec, pred, base_dir=base_dir, timeout_s=timeout_s)["match"]
        else:
            r = evaluate_prediction(rec, pred, base_dir=base_dir, timeout_s=timeout_s)
        if choice is not None and choice.reason is not None:
            r["guided"] = choice.as_json()
        if fixes:
            r["pred_sql_raw"] = raw
            r["value_fixes"] = [[f.column, f.old, f.new] for f in fixes]
            r["match_raw"] = evaluate_prediction(rec, raw, base_dir=base_dir, timeout_s=timeout_s)["match"]
        r["question"] = rec.get("question")
        r["model"] = label
        if replies is not None:
            r["reply"] = replies[i]
        if latencies is not None:
            r["latency_s"] = latencies[i]
        results.append(r)
        writer.write(r)
    return results


def run_model(records, base_dir, args, *, adapter_path, label, writer):
    """Generate SQL for every record with one model; returns (results, throughput info).

    Records are generated and scored in chunks (4 batches at a time, at least 64), each chunk's
    results written before the next starts, so an interrupted run keeps what it finished;
    records whose result ``writer.done`` already holds (``--resume``) are not generated again.
    The engine keeps computed schema prefixes between chunks."""
    from tqdm import tqdm

    from .engine import SQLGenerator
    from .generate import load as load_for_inference
    from .prompts import record_messages

    # Same model loading as generate (CPU: dense float32; adapter's own settings otherwise).
    loaded = load_for_inference(argparse.Namespace(**{**vars(args), "adapter_path": adapter_path}))
    gen = SQLGenerator(loaded)
    repairer = None
    if getattr(args, "fix_values", False):
        from .repair import Repairer

        repairer = Repairer()
    guide = None
    if getattr(args, "exec_guided", 0):
        from .guided import ExecutionGuide

        guide = ExecutionGuide(gen, samples=args.exec_guided, temp=args.guided_temp, top_p=args.guided_top_p,
                               seed=args.seed, max_tokens=args.max_tokens, batch_size=args.batch_size,
                               timeout_s=args.timeout, repairer=repairer)
    results: list[dict | None] = [writer.done.get(result_key(r, label)) for r in records]
    todo = [i for i, r in enumerate(results) if r is None]
    if len(todo) < len(records):
        print(f"{label}: {len(records) - len(todo)} results taken from {writer.partial}, "
              f"{len(todo)} to generate", file=sys.stderr)
    bar = tqdm(total=len(todo), desc=f"{label}: generating", unit="q", disable=args.quiet,
               file=sys.stderr)
    # Replies sampled for failing queries (--exec-guided) get their own bar: the number is
    # known only once a chunk's greedy queries have been run.
    sample_bar = None
    if guide is not None:
        sample_bar = tqdm(total=0, desc=f"{label}: sampling for failed queries", unit="reply",
                          disable=args.quiet, file=sys.stderr)
    chunk = max(64, 4 * args.batch_size)
    outs = []
    t0 = time.perf_counter()
    for lo in range(0, len(todo), chunk):
        part = todo[lo: lo + chunk]
        got = gen.generate([record_messages(records[i]) for i in part], max_tokens=args.max_tokens,
                           temp=args.temp, top_p=args.top_p, seed=args.seed,
                           batch_size=args.batch_size, progress=bar.update)
        choices = _guide(guide, [records[i] for i in part], got, base_dir, repairer, sample_bar) if guide else None
        scored = score_predictions([records[i] for i in part], [o.sql for o in got], base_dir,
                                   timeout_s=args.timeout, label=label, writer=writer,
                                   replies=[o.text for o in got], latencies=[o.seconds for o in got],
                                   repairer=repairer, choices=choices)
        for i, r in zip(part, scored):
            results[i] = r
        outs += got
    wall = time.perf_counter() - t0
    bar.close()
    if sample_bar is not None:
        sample_bar.close()
    n_tokens = sum(o.n_tokens for o in outs)
    speed = None
    if outs:
        speed = {
            "queries_per_s": len(outs) / wall if wall > 0 else None,
            "generated_tokens_per_s": n_tokens / wall if wall > 0 else None,
            "mean_latency_s": sum(o.seconds for o in outs) / len(outs),
            "wall_s": wall,
            "truncated_replies": sum(o.finish_reason == "length" for o in outs),
        }
    if repairer is not None:
        repairer.close()
    del gen, loaded
    return results, speed


def _guide(guide, records, got, base_dir, repairer, bar=None):
    """The execution guide's choices for one chunk's greedy replies (value-repaired first when
    ``repairer`` is given, as scoring does). WikiSQL queries are checked the way they are
    scored: text compared without case."""
    from .guided import Item
    from .metrics import _resolve_db
    from .prompts import record_messages

    items = []
    for rec, o in zip(records, got):
        db = _resolve_db(rec, base_dir)
        question = rec.get("question") or ""
        sql = o.sql
        if repairer is not None:
            sql = repairer.fix(sql, db, question)[0]
        items.append(Item(record_messages(rec), sql, str(db) if db is not None else None, question,
                          case_insensitive=str(rec.get("source") or "").lower().startswith("wikisql")))
    if bar is None:
        return guide.refine(items)

    def announce(n: int) -> None:
        bar.total += n
        bar.refresh()

    return guide.refine(items, progress=bar.update, announce=announce)


def _report(label: str, summary: dict, speed: dict | None) -> str:
    from .metrics import format_summary

    lines = [f"== {label} ==", format_summary(summary)]
    fixed = summary.get("value_repair")
    if fixed:
        lines.append(f"value repair: {fixed['changed']} predictions changed ({fixed['gained']} now match, "
                     f"{fixed['lost']} no longer do); execution accuracy without it "
                     f"{100 * fixed['execution_accuracy_raw']:.1f}%")
    guided = summary.get("exec_guided")
    if guided:
        lines.append(f"execution-guided decoding: {guided['retried']} greedy queries failed on the database "
                     f"({guided['error']} errors, {guided['empty']} without rows), "
                     f"{guided['changed']} replaced by a sampled one ({guided['gained']} now match, "
                     f"{guided['lost']} no longer do); execution accuracy without it "
                     f"{100 * guided['execution_accuracy_greedy']:.1f}%")
    if speed:
        lines.append(
            f"speed: {speed['queries_per_s']:.2f} queries/s, {speed['generated_tokens_per_s']:.1f} generated tokens/s, "
            f"mean latency {speed['mean_latency_s']:.2f}s per query (batched), "
            f"{speed['truncated_replies']} replies hit --max-tokens")
    return "\n".join(lines)


def _summarize(results: list[dict], args) -> dict:
    """:func:`metrics.summarize`, plus what value repair changed (with --fix-values)."""
    from .metrics import summarize

    summary = summarize(results)
    scored = [r for r in results if r.get("match") is not None]

    def greedy(r):  # the greedy query's score (before execution-guided decoding)
        return bool(r["match_greedy"] if "match_greedy" in r else r["match"])

    if getattr(args, "fix_values", False):
        changed = [r for r in results if "match_raw" in r]
        raw_ok = sum(bool(r["match_raw"] if "match_raw" in r else greedy(r)) for r in scored)
        summary["value_repair"] = {
            "changed": len(changed),
            "gained": sum(greedy(r) and not r["match_raw"] for r in changed),
            "lost": sum(bool(r["match_raw"]) and not greedy(r) for r in changed),
            "execution_accuracy_raw": raw_ok / len(scored) if scored else 0.0,
        }
    if getattr(args, "exec_guided", 0):
        retried = [r for r in results if r.get("guided")]
        changed = [r for r in results if "match_greedy" in r]
        summary["exec_guided"] = {
            "retried": len(retried),
            **{k: sum(r["guided"]["reason"] == k for r in retried) for k in ("error", "empty")},
            "changed": len(changed),
            "gained": sum(bool(r["match"]) and not r["match_greedy"] for r in changed),
            "lost": sum(bool(r["match_greedy"]) and not r["match"] for r in changed),
            "execution_accuracy_greedy": sum(greedy(r) for r in scored) / len(scored) if scored else 0.0,
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(_main, args)


def _main(args) -> int:
    problems = []
    if args.limit is not None and args.limit < 1:
        problems.append("--limit must be at least 1")
    if args.sample is not None and args.sample < 1:
        problems.append("--sample must be at least 1")
    if args.sample is not None and args.limit is not None:
        problems.append("give --limit or --sample, not both")
    if args.batch_size < 1:
        problems.append("--batch-size must be at least 1")
    if args.max_tokens < 1:
        problems.append("--max-tokens must be at least 1")
    if args.exec_guided < 0:
        problems.append("--exec-guided must be 0 (off) or a number of samples")
    if args.exec_guided and args.guided_temp <= 0:
        problems.append("--guided-temp must be above 0 (the alternatives are sampled)")
    if args.exec_guided and not 0 < args.guided_top_p <= 1:
        problems.append("--guided-top-p must be in (0, 1]")
    if args.exec_guided and args.gold:
        problems.append("--exec-guided needs a model: drop --gold")
    if args.gold and (args.compare_base or args.adapter_path):
        problems.append("--gold scores the data itself: drop --adapter-path / --compare-base")
    if args.compare_base and not args.adapter_path:
        problems.append("--compare-base needs --adapter-path")
    if args.adapter_path and not Path(args.adapter_path).is_dir():
        problems.append(f"--adapter-path {args.adapter_path}: no such folder")
    if problems:
        raise ConfigError(problems)
    if not args.gold:
        from .blas import ensure_fast_blas

        ensure_fast_blas()

    from .metrics import summarize

    path = resolve_data(args.data)
    records, bad = load_records(path, args.limit, args.strict)
    if args.sample is not None and args.sample < len(records):
        import random

        keep = sorted(random.Random(args.seed).sample(range(len(records)), args.sample))
        print(f"a random sample of {args.sample} of {len(records)} records (seed {args.seed})", file=sys.stderr)
        records = [records[i] for i in keep]
    for err in bad[:10]:
        print(f"skipped: {err}", file=sys.stderr)
    if len(bad) > 10:
        print(f"skipped: ... and {len(bad) - 10} more", file=sys.stderr)
    if not records:
        raise InputError("no usable records", str(path))
    base_dir = path.parent
    print(f"evaluating {len(records)} records from {path}", file=sys.stderr)

    if args.resume and not args.output:
        raise ConfigError("--resume needs --output (the file whose .partial it continues)")
    writer = _Writer(args.output, resume=args.resume)
    ok = False
    try:
        runs: list[tuple[str, dict, dict | None]] = []
        if args.gold:
            results = score_predictions(records, [r["sql"] for r in records], base_dir,
                                        timeout_s=args.timeout, label="gold", writer=writer)
            runs.append(("gold", summarize(results), None))
        else:
            if args.compare_base:
                results, speed = run_model(records, base_dir, args, adapter_path=None, label="base",
                                           writer=writer)
                runs.append(("base", _summarize(results, args), speed))
            label = "adapter" if args.adapter_path else "model"
            results, speed = run_model(records, base_dir, args, adapter_path=args.adapter_path,
                                       label=label, writer=writer)
            runs.append((label, _summarize(results, args), speed))
        ok = True
    except KeyboardInterrupt:
        if args.output:
            print(f"\ninterrupted: the results scored so far are in {writer.partial}; run the same "
                  "command with --resume to generate only the rest", file=sys.stderr)
        raise
    finally:
        writer.close(ok)

    for label, summary, speed in runs:
        print(_report(label, summary, speed))
        print()
    if args.output:
        print(f"per-example results: {args.output}", file=sys.stderr)
    if len(runs) > 1:
        for label, summary, _ in runs:
            print(f"{label}_execution_accuracy: {summary['execution_accuracy'] or 0.0:.3f}")
    final = runs[-1][1]
    print(f"execution_accuracy: {final['execution_accuracy'] or 0.0:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
