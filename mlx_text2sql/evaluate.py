"""``python -m mlx_text2sql.evaluate``: execution accuracy of a model (+ adapter) on a test set.

For every record of a converted JSONL file: build the prompt with the same prompt module as
training, generate (batched), extract the SQL, run predicted and gold SQL read-only on the
record's database, and compare the results (rules in :mod:`mlx_text2sql.metrics`).

Prints a summary table (execution accuracy, exact match, valid-SQL rate, by source and by Spider
hardness, queries/s, latency) and ends with the machine-readable line
``execution_accuracy: 0.xxx``. ``--output`` keeps one JSON line per example (question, gold,
predicted, raw reply, error, match) so the failures can be read; it is written as the run goes,
so an interrupted run keeps what it finished. ``--replies`` scores the replies such a file holds
again, without a model: the same replies under other repair options, or after a change to the
repairs or the metric.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from . import cli_options as opts
from .api import AskOptions, Question
from .errors import ConfigError, InputError, run_cli

EPILOG = """examples:
  # score the gold SQL against itself (checks the data and the executor; no model)
  python -m mlx_text2sql.evaluate --data data/test.jsonl --gold
  # the adapter trained by `python -m mlx_text2sql.train`, against its base model
  python -m mlx_text2sql.evaluate --adapter-path adapters --data data/test.jsonl --compare-base
  # a model from the Hub on 200 converted WikiSQL examples, failures kept for reading
  python -m mlx_text2sql.evaluate --model mlx-community/TinyLlama-1.1B-Chat-v1.0-4bit \\
      --data wikisql/test.jsonl --limit 200 --output predictions.jsonl
  # the same replies scored again with name and value repair (no model is loaded)
  python -m mlx_text2sql.evaluate --data wikisql/test.jsonl --limit 200 \\
      --replies predictions.jsonl --fix-names --fix-values
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlx-text2sql evaluate", description=__doc__.split("\n\n")[0],
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True,
                   help="converted JSONL file, or a folder holding test.jsonl")
    opts.add_model_options(p)
    p.add_argument("--gold", action="store_true",
                   help="score the gold SQL against itself instead of a model")
    p.add_argument("--compare-base", action="store_true",
                   help="also score the base model without the adapter, in the same run")
    p.add_argument("--replies", default=None, metavar="FILE",
                   help="score the model replies an earlier run wrote to FILE (its --output) instead of "
                        "generating: each record's reply is found by id and question; with the repair "
                        "options, the replies are repaired as a model run would repair them (no model "
                        "is loaded)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N records")
    p.add_argument("--executable-only", action="store_true",
                   help="leave out records whose SQLite file is missing (they cannot be scored by "
                        "execution; e.g. Spider dev's wta_1), before --limit/--sample")
    p.add_argument("--sample", type=int, default=None, metavar="N",
                   help="evaluate a random sample of N records (drawn with --seed, kept in file order), "
                        "e.g. a quick estimate over every database of Spider dev")
    p.add_argument("--output", default=None,
                   help="per-example results (JSONL); written as they are scored, to OUTPUT.partial "
                        "until the run ends (an interrupted run keeps what it scored)")
    p.add_argument("--resume", action="store_true",
                   help="with --output: take the results an interrupted run left in OUTPUT.partial "
                        "and generate only the rest")
    opts.add_refine_options(p, fix_values_help="; the accuracy without it is reported too",
                            exec_guided_help="; the accuracy without it is reported too")
    opts.add_generation_options(p, batch_size=32, seed=0,
                                batch_size_help="; rows decoded together share each read of the weights; "
                                                "lower it for a large model on a machine with little memory")
    opts.add_timeout_option(p)
    opts.add_prefix_cache_option(p)
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
                      latencies=None, repairer=None, choices=None, progress=None):
    """Evaluate ``predictions[i]`` (SQL text) against ``records[i]``; returns per-example dicts.

    With a :class:`~mlx_text2sql.repair.Repairer`, each prediction is value-repaired first; a
    changed one also records ``pred_sql_raw``, ``value_fixes`` and ``match_raw`` (the raw
    prediction's score). With ``choices`` (execution-guided decoding, :mod:`.guided`), a
    prediction the guide replaced is scored as replaced, and also records ``pred_sql_greedy``
    and ``match_greedy`` (the greedy query's score); every retried one records ``guided``."""
    from .metrics import _resolve_db, evaluate_prediction
    from .name_repair import NameFix

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
            named = [f for f in fixes if isinstance(f, NameFix)]
            if named:
                r["name_fixes"] = [[f.kind, f.old, f.new] for f in named]
            if len(named) < len(fixes):
                r["value_fixes"] = [[f.column, f.old, f.new] for f in fixes if not isinstance(f, NameFix)]
            r["match_raw"] = evaluate_prediction(rec, raw, base_dir=base_dir, timeout_s=timeout_s)["match"]
        r["question"] = rec.get("question")
        r["model"] = label
        if replies is not None:
            r["reply"] = replies[i]
        if latencies is not None:
            r["latency_s"] = latencies[i]
        results.append(r)
        writer.write(r)
        if progress is not None:
            progress(1)
    return results


def run_model(records, base_dir, *, load: dict, options: AskOptions, label: str, writer, quiet: bool = False):
    """Generate SQL for every record with one model (``load``: :meth:`Text2SQL.load` keywords);
    returns (results, throughput info).

    Records are generated and scored in chunks (4 batches at a time, at least 64), each chunk's
    results written before the next starts, so an interrupted run keeps what it finished;
    records whose result ``writer.done`` already holds (``--resume``) are not generated again.
    The engine keeps computed schema prefixes between chunks."""
    from tqdm import tqdm

    from .api import Text2SQL

    t2s = Text2SQL.load(**load, log=None if quiet else _log_loaded)
    # Scoring repairs (and reports) the greedy queries itself; the API repairs them only for
    # execution-guided decoding, which checks the repaired query.
    ask = replace(options, execute=False, fix_values=options.fix_values and bool(options.guided_samples),
                  fix_names=options.fix_names and bool(options.guided_samples))
    repairer = (t2s.repairer.configured(values=options.fix_values, names=options.fix_names)
                if options.fix_values or options.fix_names else None)
    results: list[dict | None] = [writer.done.get(result_key(r, label)) for r in records]
    todo = [i for i, r in enumerate(results) if r is None]
    if len(todo) < len(records):
        print(f"{label}: {len(records) - len(todo)} results taken from {writer.partial}, "
              f"{len(todo)} to generate", file=sys.stderr)
    bar = tqdm(total=len(todo), desc=f"{label}: generating", unit="q", disable=quiet, file=sys.stderr)
    # Replies sampled for failing queries (--exec-guided) get their own bar: the number is
    # known only once a chunk's greedy queries have been run.
    sample_bar = None
    if options.guided_samples:
        what = ("voting samples" if options.vote else "constrained retries" if options.constrained_retry
                else "sampling for failed queries")
        sample_bar = tqdm(total=0, desc=f"{label}: {what}", unit="reply",
                          disable=quiet, file=sys.stderr)
    chunk = max(64, 4 * options.batch_size)
    outs = []
    t0 = time.perf_counter()
    for lo in range(0, len(todo), chunk):
        part = [records[i] for i in todo[lo: lo + chunk]]
        got = t2s.ask_many([_question(rec, base_dir) for rec in part], options=ask, progress=bar.update,
                           guided_progress=sample_bar.update if sample_bar is not None else None,
                           guided_announce=(lambda n: _grow(sample_bar, n)) if sample_bar is not None else None)
        choices = [_choice(a) for a in got] if options.guided_samples else None
        scored = score_predictions(part, [a.sql_greedy or "" for a in got], base_dir,
                                   timeout_s=options.timeout_s, label=label, writer=writer,
                                   replies=[a.reply for a in got], latencies=[a.timings.decode_s for a in got],
                                   repairer=repairer, choices=choices)
        for i, r in zip(todo[lo: lo + chunk], scored):
            results[i] = r
        outs += got
    wall = time.perf_counter() - t0
    bar.close()
    if sample_bar is not None:
        sample_bar.close()
    speed = _speed(outs, wall)
    if speed is not None and (options.constrain_names or options.constrained_retry):
        stats = t2s.generator.stats
        speed["constrained_tokens"] = stats.constrained_tokens
        speed["constraints_dropped"] = stats.constraints_dropped
    t2s.close()
    del t2s
    return results, speed


def _log_loaded(msg: str) -> None:
    print(f"[generate] {msg}", file=sys.stderr, flush=True)


def _question(rec: dict, base_dir) -> Question:
    """A record as the API's question: its own prompt, run on its database. WikiSQL queries
    are checked the way they are scored: text compared without case."""
    from .metrics import _resolve_db
    from .prompts import record_messages

    q = rec.get("question")
    source = str(rec.get("source") or "").lower()
    return Question(q if isinstance(q, str) else "", db=_resolve_db(rec, base_dir), messages=record_messages(rec),
                    case_insensitive=source.startswith("wikisql"),
                    double_quoted_strings=True if source.startswith("spider") else None)


def _choice(answer):
    """The execution guide's choice for one answer, as scoring reads it."""
    from .guided import Choice

    if answer.guided is None:
        return Choice(reason=None, sql=answer.sql or "")
    return Choice(sql=answer.sql or "", **answer.guided)


def _grow(bar, n: int) -> None:
    bar.total += n
    bar.refresh()


def _speed(outs, wall: float) -> dict | None:
    if not outs:
        return None
    n_tokens = sum(a.n_tokens for a in outs)
    return {
        "queries_per_s": len(outs) / wall if wall > 0 else None,
        "generated_tokens_per_s": n_tokens / wall if wall > 0 else None,
        "mean_latency_s": sum(a.timings.decode_s for a in outs) / len(outs),
        "wall_s": wall,
        "truncated_replies": sum(a.finish_reason == "length" for a in outs),
    }


def _report(label: str, summary: dict, speed: dict | None) -> str:
    from .metrics import format_summary

    lines = [f"== {label} ==", format_summary(summary)]
    fixed = summary.get("value_repair")
    named = summary.get("name_repair")
    if named:
        lines.append(f"name repair: {named['changed']} predictions had {named['fixes']} unknown table or "
                     "column names replaced")
    if fixed:
        what = " and ".join(fixed.get("kinds", ["value"])) + " repair"
        lines.append(f"{what}: {fixed['changed']} predictions changed ({fixed['gained']} now match, "
                     f"{fixed['lost']} no longer do); execution accuracy without it "
                     f"{100 * fixed['execution_accuracy_raw']:.1f}%")
    guided = summary.get("exec_guided")
    if guided and guided.get("mode") == "vote":
        lines.append(f"voting: {guided['retried']} questions voted on (greedy query + samples by execution "
                     f"result); {guided['changed']} answers changed ({guided['gained']} now match, "
                     f"{guided['lost']} no longer do); execution accuracy without it "
                     f"{100 * guided['execution_accuracy_greedy']:.1f}%")
    elif guided and guided.get("mode") == "constrained":
        lines.append(f"constrained retry: {guided['retried']} greedy queries raised an error on the database and "
                     f"were decoded again under the name constraint; {guided['changed']} replaced by the "
                     f"constrained query ({guided['gained']} now match, {guided['lost']} no longer do); execution "
                     f"accuracy without it {100 * guided['execution_accuracy_greedy']:.1f}%")
    elif guided:
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
    if speed and "constrained_tokens" in speed:
        lines.append(f"constrained decoding: {speed['constrained_tokens']} tokens chosen over the model's first "
                     f"choice; {speed['constraints_dropped']} replies decoded freely from a step where none of "
                     "the likely tokens was allowed")
    return "\n".join(lines)


def _summarize(results: list[dict], fix_values: bool = False, exec_guided: bool = False,
               vote: bool = False, fix_names: bool = False, constrained: bool = False) -> dict:
    """:func:`metrics.summarize`, plus what repair changed (with --fix-values / --fix-names:
    ``value_repair``, both kinds together, and ``name_repair``, the predictions whose names
    changed)."""
    from .metrics import summarize

    summary = summarize(results)
    scored = [r for r in results if r.get("match") is not None]

    def greedy(r):  # the greedy query's score (before execution-guided decoding)
        return bool(r["match_greedy"] if "match_greedy" in r else r["match"])

    if fix_names:
        renamed = [r for r in results if "name_fixes" in r]
        summary["name_repair"] = {"changed": len(renamed),
                                  "fixes": sum(len(r["name_fixes"]) for r in renamed)}
    if fix_values or fix_names:
        changed = [r for r in results if "match_raw" in r]
        raw_ok = sum(bool(r["match_raw"] if "match_raw" in r else greedy(r)) for r in scored)
        summary["value_repair"] = {
            "changed": len(changed),
            "gained": sum(greedy(r) and not r["match_raw"] for r in changed),
            "lost": sum(bool(r["match_raw"]) and not greedy(r) for r in changed),
            "execution_accuracy_raw": raw_ok / len(scored) if scored else 0.0,
            "kinds": [k for k, on in (("name", fix_names), ("value", fix_values)) if on],
        }
    if exec_guided:
        retried = [r for r in results if r.get("guided")]
        changed = [r for r in results if "match_greedy" in r]
        summary["exec_guided"] = {
            "mode": "vote" if vote else "constrained" if constrained else "failed",
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


def _validate(args) -> None:
    problems = []
    if args.limit is not None and args.limit < 1:
        problems.append("--limit must be at least 1")
    if args.sample is not None and args.sample < 1:
        problems.append("--sample must be at least 1")
    if args.sample is not None and args.limit is not None:
        problems.append("give --limit or --sample, not both")
    problems += opts.generation_problems(args)
    problems += opts.prefix_cache_problems(args)
    decoding = (("--exec-guided", args.exec_guided), ("--vote", args.vote),
                ("--constrain-names", args.constrain_names), ("--constrained-retry", args.constrained_retry))
    if args.gold:
        problems += [f"{flag} needs a model: drop --gold" for flag, on in decoding if on]
    if args.gold and (args.compare_base or args.adapter_path):
        problems.append("--gold scores the data itself: drop --adapter-path / --compare-base")
    if args.replies is not None:
        if args.gold:
            problems.append("give --gold or --replies, not both")
        for flag, on in (("--compare-base", args.compare_base), ("--resume", args.resume), *decoding):
            if on:
                problems.append(f"{flag} needs a model run: --replies scores saved replies")
        if not Path(args.replies).is_file():
            problems.append(f"--replies {args.replies}: file not found")
    if args.compare_base and not args.adapter_path:
        problems.append("--compare-base needs --adapter-path")
    if args.adapter_path and not Path(args.adapter_path).is_dir():
        problems.append(f"--adapter-path {args.adapter_path}: no such folder")
    if problems:
        raise ConfigError(problems)


def _select_records(data: str, *, limit: int | None, sample: int | None, seed: int,
                    strict: bool, executable_only: bool = False) -> tuple[list[dict], Path]:
    """The records to evaluate (the first ``limit``, or a seeded ``sample`` kept in file
    order; with ``executable_only``, of those whose database file exists) and the file they
    came from; skipped lines are named on stderr."""
    path = resolve_data(data)
    records, bad = load_records(path, None if executable_only else limit, strict)
    if executable_only:
        records = _executable(records, path.parent)
        records = records[:limit] if limit is not None else records
    if sample is not None and sample < len(records):
        import random

        keep = sorted(random.Random(seed).sample(range(len(records)), sample))
        print(f"a random sample of {sample} of {len(records)} records (seed {seed})", file=sys.stderr)
        records = [records[i] for i in keep]
    for err in bad[:10]:
        print(f"skipped: {err}", file=sys.stderr)
    if len(bad) > 10:
        print(f"skipped: ... and {len(bad) - 10} more", file=sys.stderr)
    if not records:
        raise InputError("no usable records", str(path))
    return records, path


def _executable(records: list[dict], base_dir: Path) -> list[dict]:
    """The records whose ``db_path`` names an existing file; the others are counted on stderr
    by database."""
    from collections import Counter

    from .scoring.evaluation import _resolve_db

    keep, gone = [], Counter()
    for r in records:
        db = _resolve_db(r, base_dir)
        if db is not None and db.is_file():
            keep.append(r)
        else:
            gone[r.get("db_id") or str(r.get("db_path") or "no database")] += 1
    if gone:
        named = ", ".join(f"{k} ({v})" for k, v in gone.most_common(5))
        more = f" and {len(gone) - 5} more" if len(gone) > 5 else ""
        print(f"--executable-only: left out {sum(gone.values())} records without a database file: {named}{more}",
              file=sys.stderr)
    return keep


def _model_runs(records, base_dir, *, load: dict, options: AskOptions, compare_base: bool,
                writer, quiet: bool) -> list[tuple[str, dict, dict | None]]:
    """(label, summary, speed) of the base model (with ``compare_base``) and of the model."""
    refined = {"fix_values": options.fix_values, "fix_names": options.fix_names,
               "exec_guided": bool(options.guided_samples), "vote": bool(options.vote),
               "constrained": options.constrained_retry}
    runs = []
    if compare_base:
        results, speed = run_model(records, base_dir, load={**load, "adapter_path": None}, options=options,
                                   label="base", writer=writer, quiet=quiet)
        runs.append(("base", _summarize(results, **refined), speed))
    label = "adapter" if load.get("adapter_path") else "model"
    results, speed = run_model(records, base_dir, load=load, options=options, label=label,
                               writer=writer, quiet=quiet)
    runs.append((label, _summarize(results, **refined), speed))
    return runs


def saved_replies(path: Path, records: list[dict]) -> tuple[str, list[str]]:
    """The model label and each record's reply in ``path`` (an evaluate ``--output`` file),
    matched by id and question. A file that holds results of two models (``--compare-base``)
    gives the adapter's. Raises :class:`InputError` naming the first record without one."""
    from .jsonl import iter_jsonl

    by_label: dict[str, dict[str, str]] = {}
    for _, r in iter_jsonl(path, strict=False, problems=[]):
        if isinstance(r.get("reply"), str) and isinstance(r.get("model"), str):
            by_label.setdefault(r["model"], {})[result_key(r, "")] = r["reply"]
    if not by_label:
        raise InputError("holds no results with a model reply (write it with evaluate --output)", str(path))
    label = next((k for k in ("adapter", "model") if k in by_label), next(iter(by_label)))
    replies = by_label[label]
    out = []
    for rec in records:
        reply = replies.get(result_key(rec, ""))
        if reply is None:
            missing = sum(result_key(r, "") not in replies for r in records)
            raise InputError(f"has no {label} reply for record {rec.get('id')!r} ({missing} of "
                             f"{len(records)} records have none): was it written for this data?", str(path))
        out.append(reply)
    return label, out


def _rescore(records, base_dir, args, writer) -> tuple[str, dict, None]:
    """(label, summary, None) of the replies saved in ``args.replies``, extracted, repaired and
    scored as :func:`run_model` scores a model's."""
    from tqdm import tqdm

    from .prompts import extract_sql
    from .repair import Repairer

    label, replies = saved_replies(Path(args.replies), records)
    print(f"scoring the {label} replies saved in {args.replies}", file=sys.stderr)
    repairer = (Repairer().configured(values=args.fix_values, names=args.fix_names)
                if args.fix_values or args.fix_names else None)
    bar = tqdm(total=len(records), desc=f"{label}: scoring saved replies", unit="q", disable=args.quiet,
               file=sys.stderr)
    try:
        results = score_predictions(records, [extract_sql(r) for r in replies], base_dir,
                                    timeout_s=args.timeout, label=label, writer=writer,
                                    replies=replies, repairer=repairer, progress=bar.update)
    finally:
        bar.close()
        if repairer is not None:
            repairer.repairer.close()
    return label, _summarize(results, fix_values=args.fix_values, fix_names=args.fix_names), None


def _main(args) -> int:
    _validate(args)
    if not args.gold and args.replies is None:
        from .blas import ensure_fast_blas

        ensure_fast_blas()

    from .metrics import summarize

    records, path = _select_records(args.data, limit=args.limit, sample=args.sample, seed=args.seed,
                                    strict=args.strict, executable_only=args.executable_only)
    base_dir = path.parent
    print(f"evaluating {len(records)} records from {path}", file=sys.stderr)

    if args.resume and not args.output:
        raise ConfigError("--resume needs --output (the file whose .partial it continues)")
    writer = _Writer(args.output, resume=args.resume)
    ok = False
    try:
        if args.gold:
            results = score_predictions(records, [r["sql"] for r in records], base_dir,
                                        timeout_s=args.timeout, label="gold", writer=writer)
            runs = [("gold", summarize(results), None)]
        elif args.replies is not None:
            runs = [_rescore(records, base_dir, args, writer)]
        else:
            runs = _model_runs(records, base_dir, load={**opts.load_kwargs(args), **opts.engine_kwargs(args)},
                               options=opts.ask_options(args, execute=False), compare_base=args.compare_base,
                               writer=writer, quiet=args.quiet)
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
