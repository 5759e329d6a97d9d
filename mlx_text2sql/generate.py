"""``python -m mlx_text2sql.generate``: SQL for a question over a schema or a live SQLite file.

The prompt is built by :func:`mlx_text2sql.prompts.build_messages` from the schema, exactly as
in training: ``--db`` reads the tables (types, keys, ``--sample-rows`` rows) from the database
itself; ``--schema`` / ``--schema-file`` take CREATE TABLE text (checked with sqlglot).

Output: the SQL alone on stdout (one query per question; nothing when the reply holds no
query, with a note on stderr and exit code 1); logs, progress and ``--stream``'s live reply on
stderr, so ``sql=$(python -m mlx_text2sql.generate ...)`` captures just the query. With
``--execute`` the result table follows the SQL on stdout.

Modes: one ``--question``; ``--input questions.jsonl --output predictions.jsonl`` (batched);
questions from stdin, one per line, batched (when stdin is not a terminal); or an interactive
loop (no question given, stdin a terminal).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from . import cli_options as opts
from .api import AskOptions, Question
from .errors import ConfigError, InputError, run_model_cli
from .inference.questions import PromptBuilder, PromptSettings, parse_tables, read_schema_file
from .inference.records import Job, read_input

EPILOG = """examples:
  # ask the bundled sample database, run the query
  python -m mlx_text2sql.generate --db data/sample.sqlite --question "which airport in san solano ranks below 3?" --execute
  # with a trained adapter (its base model is read from adapter_config.json)
  python -m mlx_text2sql.generate --adapter-path adapters --schema "CREATE TABLE singer (name TEXT, age INT)" \\
      --question "how many singers are older than 30?"
  # a whole test file, batched
  python -m mlx_text2sql.generate --adapter-path adapters --input data/test.jsonl --output predictions.jsonl
"""

DEFAULT_MAX_TOKENS = opts.DEFAULT_MAX_TOKENS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlx-text2sql generate", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    opts.add_model_options(p.add_argument_group("model"))

    s = p.add_argument_group("schema (one of)")
    s.add_argument("--schema", default=None, help="CREATE TABLE statements")
    s.add_argument("--schema-file", default=None, help="file holding CREATE TABLE statements")
    s.add_argument("--db", default=None, help="SQLite database: the schema is read from it")
    s.add_argument("--tables", default=None,
                   help="with --db: the tables to show, comma-separated; 'all'; or 'auto' (default): "
                        "the tables the question is about (tables linked by foreign keys stay together; "
                        "a database of at most 3 tables is shown whole)")
    s.add_argument("--sample-rows", type=int, default=None,
                   help="with --db: rows shown per table (default: as in training, else 3)")
    s.add_argument("--value-hints", dest="value_hints", action="store_true", default=None,
                   help="with --db: add the 'Values:' line naming the cells the question mentions "
                        "(default: when the adapter was trained on records with it)")
    s.add_argument("--no-value-hints", dest="value_hints", action="store_false",
                   help="with --db: never add the 'Values:' line")

    q = p.add_argument_group("questions")
    q.add_argument("--question", "-q", default=None, help="the question to answer")
    q.add_argument("--input", default=None,
                   help="JSONL of questions: records with 'question' and a schema ('schema', "
                        "'db_path' [+ 'table'/'tables'], or the command's --schema/--db), or "
                        "converted records ('messages')")
    q.add_argument("--output", default=None, help="with --input: predictions JSONL (default: stdout)")

    g = p.add_argument_group("generation")
    opts.add_generation_options(g, batch_size=16)
    g.add_argument("--stream", action="store_true",
                   help="show the reply on stderr as it is generated (stdout still gets only the SQL)")
    g.add_argument("--show-prompt", action="store_true", help="print the full prompt to stderr")

    e = p.add_argument_group("execution")
    e.add_argument("--execute", action="store_true", help="run the SQL on --db (read-only) and print the result")
    opts.add_refine_options(
        e, fix_values_help=", against the database (--db, or a record's db_path); changes are noted on stderr",
        exec_guided_help=", against the database (--db, or a record's db_path); changes are noted on stderr")
    e.add_argument("--max-rows", type=int, default=20, help="result rows shown (default 20)")
    opts.add_timeout_option(e)
    opts.add_prefix_cache_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar or timing notes")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_model_cli(_main, argv)


# --------------------------------------------------------------------------- settings

def _validate(args) -> None:
    problems = []
    given = [name for name, v in (("--schema", args.schema), ("--schema-file", args.schema_file),
                                  ("--db", args.db)) if v is not None]
    if len(given) > 1:
        problems.append(f"give one schema source, not {' and '.join(given)}")
    if args.tables is not None and args.db is None:
        problems.append("--tables needs --db")
    if args.question is not None and args.input is not None:
        problems.append("give --question or --input, not both")
    if args.output is not None and args.input is None:
        problems.append("--output needs --input")
    problems += opts.generation_problems(args, max_rows=args.max_rows, sample_rows=args.sample_rows)
    problems += opts.prefix_cache_problems(args)
    if (args.exec_guided or args.vote or args.constrained_retry) and args.db is None and args.input is None:
        flag = "--exec-guided" if args.exec_guided else "--vote" if args.vote else "--constrained-retry"
        problems.append(f"{flag} needs --db (the database the queries are checked on)")
    if args.execute and args.db is None and args.input is None:
        problems.append("--execute needs --db (the database to run the SQL on)")
    if args.adapter_path is not None and not Path(args.adapter_path).is_dir():
        problems.append(f"--adapter-path {args.adapter_path}: no such folder")
    if problems:
        raise ConfigError(problems)


@dataclass(frozen=True)
class _Out:
    """How results are shown: the output flags, and the database as the user named it."""

    quiet: bool = False
    stream: bool = False
    show_prompt: bool = False
    execute: bool = False
    max_tokens: int = opts.DEFAULT_MAX_TOKENS
    max_rows: int = 20
    db: str | None = None
    output: str | None = None

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class _Source:
    """The command's schema: CREATE TABLE text (with where it came from) or a database."""

    schema: str | None = None
    where: str = "--schema"
    db: Path | None = None
    tables: list[str] | None = None  # None: pick per question; []: every table

    @property
    def available(self) -> bool:
        return self.schema is not None or self.db is not None

    def messages(self, builder: PromptBuilder, question: str) -> list[dict]:
        if not self.available:
            raise ConfigError("no schema: give --schema, --schema-file or --db")
        return builder.messages(question, db=self.db, schema=self.schema, tables=self.tables, where=self.where)


def _source(schema: str | None, schema_file: str | None, db: str | None, tables: str | None,
            builder: PromptBuilder) -> _Source:
    """The schema flags, checked now (a bad schema or database fails before the model loads)."""
    if schema is not None:
        builder.check_schema(schema, "--schema")
        return _Source(schema=schema, where="--schema")
    if schema_file is not None:
        text = read_schema_file(schema_file)
        builder.check_schema(text, str(Path(schema_file)))
        return _Source(schema=text, where=str(Path(schema_file)))
    if db is not None:
        names = parse_tables(tables)
        builder.check_database(db, names)
        return _Source(db=Path(db), tables=names)
    return _Source()


def _prompt_settings(model, adapter_path, sample_rows, value_hints) -> PromptSettings:
    """The prompt settings the model was trained with, with the command's overrides."""
    settings = PromptSettings.trained(model, adapter_path)
    if sample_rows is not None:
        settings = replace(settings, sample_rows=sample_rows)
    if value_hints is not None:
        settings = replace(settings, value_hints=value_hints)
    return settings


def _load(load_kw: dict, builder: PromptBuilder, out: _Out):
    from .api import Text2SQL

    return Text2SQL.load(**load_kw, prompts=builder, log=lambda m: out.log(f"[generate] {m}"))


# --------------------------------------------------------------------------- main

def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    _validate(args)
    out = _Out(quiet=args.quiet, stream=args.stream, show_prompt=args.show_prompt, execute=args.execute,
               max_tokens=args.max_tokens, max_rows=args.max_rows, db=args.db, output=args.output)
    options = opts.ask_options(args, execute=args.execute, max_rows=args.max_rows)
    # Cheap checks (schema, database, input file) before the model loads.
    settings = _prompt_settings(args.model, args.adapter_path, args.sample_rows, args.value_hints)
    builder = PromptBuilder(settings, on_tables=lambda path, why: out.log(
        f"[generate] {path}: asking over {why}; --tables names them yourself"))
    source = _source(args.schema, args.schema_file, args.db, args.tables, builder)
    load_kw = {**opts.load_kwargs(args), **opts.engine_kwargs(args)}

    if args.input is not None:
        jobs = read_input(args.input, builder, default_db=source.db, default_tables=source.tables,
                          default_schema=source.schema.strip() if source.schema is not None else None)
        return _run_batch(_load(load_kw, builder, out), jobs, options, out)

    questions: list[str] | None = None
    if args.question is not None:
        questions = [args.question]
    elif not sys.stdin.isatty():
        questions = [line.strip() for line in sys.stdin if line.strip()]
        if not questions:
            raise ConfigError("no question: give --question, --input, or questions on stdin (one per line)")
    if not source.available:
        raise ConfigError("no schema: give --schema, --schema-file or --db")
    prompts = None
    if questions is not None:
        # Schema problems (and table choices) show before the model loads.
        prompts = [source.messages(builder, q) for q in questions]
    t2s = _load(load_kw, builder, out)
    if questions is None:
        return _interactive(t2s, builder, source, options, out)
    return _answer(t2s, questions, prompts, source, options, out)


# --------------------------------------------------------------------------- asking

class _Progress:
    """Progress of one ask_many call: the greedy replies' bar (closed when the last reply is
    in; that moment ends the generation time) and, for batches, a bar for the replies sampled
    for failed queries (--exec-guided)."""

    def __init__(self, out: _Out, total: int, label: str = "generating", unit: str = "q"):
        self.out, self.total, self.done = out, total, 0
        self.t0 = time.perf_counter()
        self.t_end: float | None = None
        self.bar = self._tqdm(total, label, unit) if not out.quiet and total >= 2 else None
        self.sample_bars: list = []

    def _tqdm(self, total: int, desc: str, unit: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        if self.done >= self.total and self.t_end is None:
            self.t_end = time.perf_counter()
            self.close_main()

    def close_main(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def announce(self, n: int) -> None:
        if self.total > 1 and not self.out.quiet:
            self.sample_bars.append(self._tqdm(n, "sampling for failed queries", "reply"))

    def sampled(self, k: int) -> None:
        for b in self.sample_bars:
            b.update(k)

    def close(self) -> float:
        """Close every bar; the generation's wall time."""
        self.close_main()
        for b in self.sample_bars:
            b.close()
        return (self.t_end or time.perf_counter()) - self.t0


def _ask(t2s, questions: list, options: AskOptions, out: _Out, stream=None):
    """ask_many with the command's progress bars; (answers, generation wall time)."""
    prog = _Progress(out, len(questions))
    try:
        answers = t2s.ask_many(questions, options=options, progress=prog.update, stream_callback=stream,
                               guided_progress=prog.sampled, guided_announce=prog.announce)
    finally:
        wall = prog.close()
    return answers, wall


def _notes(out: _Out, answers, wheres: list[str]) -> None:
    """What name and value repair and execution-guided decoding changed, on stderr."""
    for a, w in zip(answers, wheres):
        for f in a.name_fixes:
            why = {"join": f"table {f['table']} joined on its foreign key",
                   "key": f"the foreign key that links table {f['table']}",
                   "qualifier": f"the column of table {f['table']} in this SELECT"}.get(
                f["kind"], f"a name of the database{'' if f['kind'] == 'table' else ', table ' + f['table']}, "
                           f"similarity {f['score']:.2f}")
            out.log(f"[generate] {w}name repair: {f['kind']} {f['old']!r} -> {f['new']!r} ({why})")
        for f in a.value_fixes:
            out.log(f"[generate] {w}value repair: {f['column']} = {f['old']!r} -> {f['new']!r} "
                    f"(a cell of {f['table']}, similarity {f['ratio']:.2f})")
    for a, w in zip(answers, wheres):
        g = a.guided
        if g is None:
            continue
        what = {"error": "failed", "empty": "returned no rows", None: "ran"}[g["reason"]]
        if g.get("mode") == "vote":
            out.log(f"[generate] {w}voting: the greedy query {what}; {g['usable']} of {g['samples'] + 1} "
                    f"queries ran, {g['votes']} agree on the chosen result"
                    + (f": {a.sql}" if g["changed"] else " (the greedy query's)"))
        elif g["changed"]:
            out.log(f"[generate] {w}execution-guided: the greedy query {what}; {g['usable']} of {g['samples']} "
                    f"sampled queries ran, {g['votes']} agree on the result: {a.sql}")
        else:
            out.log(f"[generate] {w}execution-guided: the greedy query {what}, and none of {g['samples']} "
                    "sampled queries returned rows; keeping it")


def _stream_to_stderr(_i: int, piece: str) -> None:
    sys.stderr.write(piece)
    sys.stderr.flush()


def _answer(t2s, questions: list[str], prompts: list[list[dict]], source: _Source, options: AskOptions,
            out: _Out) -> int:
    """Answer questions; SQL (and results) on stdout. Exit 1 when a reply held no SQL, 2 when
    --execute failed."""
    if out.show_prompt:
        for p in prompts:
            print(t2s.prompt_text(p), file=sys.stderr, flush=True)
    stream = _stream_to_stderr if out.stream and len(prompts) == 1 else None
    items = [Question(q, db=out.db, messages=p) for q, p in zip(questions, prompts)]
    answers, wall = _ask(t2s, items, options, out, stream)
    if stream:
        sys.stderr.write("\n")
    n_tok = sum(a.n_tokens for a in answers)
    out.log(f"[generate] {len(answers)} question(s), {n_tok} tokens in {wall:.2f}s")
    _notes(out, answers, [""] * len(answers))
    status = 0
    for a in answers:
        status = max(status, _emit(a, out))
    return status


def _emit(a, out: _Out) -> int:
    if out.stream and a.finish_reason == "length":
        print(f"note: the reply hit --max-tokens ({out.max_tokens})", file=sys.stderr)
    if not a.sql:
        print(f"no SQL query in the model's reply to {a.question!r}: {a.reply.strip()[:200]!r}",
              file=sys.stderr)
        print("", flush=True)
        return 1
    print(a.sql, flush=True)
    if out.execute:
        from .sqlexec import format_table

        if a.error is not None:
            print(f"error: the query failed on {out.db}: {a.error}", file=sys.stderr)
            return 2
        print(format_table(a.execution, max_rows=out.max_rows), flush=True)
    return 0


def _interactive(t2s, builder: PromptBuilder, source: _Source, options: AskOptions, out: _Out) -> int:
    """Read questions from the terminal until EOF / 'exit'; the schema's prefix cache is kept
    between questions, so each one only pays for its own tokens."""
    print("Ask a question about the schema (empty line or Ctrl-D to quit).", file=sys.stderr)
    while True:
        try:
            question = input("question> ").strip()
        except EOFError:
            print(file=sys.stderr)
            return 0
        if not question or question.lower() in ("exit", "quit", ":q"):
            return 0
        try:
            prompt = source.messages(builder, question)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            continue
        if out.show_prompt:
            print(t2s.prompt_text(prompt), file=sys.stderr)
        t = time.perf_counter()
        stream = _stream_to_stderr if out.stream else None
        [a] = t2s.ask_many([Question(question, db=out.db, messages=prompt)], options=options,
                           stream_callback=stream)
        if stream:
            sys.stderr.write("\n")
        _notes(out, [a], [""])
        _emit(a, out)
        out.log(f"[{a.n_tokens} tokens, {time.perf_counter() - t:.2f}s]")


# --------------------------------------------------------------------------- batch mode

def _run_batch(t2s, jobs: list[Job], options: AskOptions, out: _Out) -> int:
    from .jsonl import atomic_open

    if out.show_prompt:
        print(t2s.prompt_text(jobs[0].messages), file=sys.stderr)
    items = [Question(j.question, db=j.db_path, schema=j.schema, messages=j.messages) for j in jobs]
    answers, wall = _ask(t2s, items, options, out)
    _notes(out, answers, [f"{j.where}: " for j in jobs])
    out_records = []
    failed = 0
    for job, a in zip(jobs, answers):
        rec = dict(job.record)
        sql = a.sql or ""
        rec.update({"prediction": sql, "reply": a.reply, "n_tokens": a.n_tokens,
                    "finish_reason": a.finish_reason})
        if sql != (a.sql_greedy or ""):
            rec["prediction_raw"] = a.sql_greedy or ""
        if a.guided is not None:
            rec["guided"] = a.guided
        if out.execute:
            rec["execution"] = _execution(job, a)
            failed += "error" in rec["execution"]
        out_records.append(rec)
    if out.output:
        with atomic_open(out.output) as f:
            for rec in out_records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    else:
        for rec in out_records:
            print(json.dumps(rec, ensure_ascii=False))
    empty = sum(not a.sql_greedy for a in answers)
    n_tok = sum(a.n_tokens for a in answers)
    out.log(f"[generate] {len(jobs)} records in {wall:.1f}s ({len(jobs) / max(wall, 1e-9):.2f} queries/s, "
            f"{n_tok / max(wall, 1e-9):.1f} tokens/s); {empty} replies without SQL"
            + (f"; {failed} queries failed" if out.execute else "")
            + (f"; predictions in {out.output}" if out.output else ""))
    return 0


def _execution(job: Job, a) -> dict:
    """A record's ``execution`` field: the result's JSON-friendly head, or the error (a
    schema-only record's query ran on an empty database built from its schema)."""
    if not a.sql:
        return {"error": "no SQL in the reply"}
    if job.db_path is None and job.schema is None:
        return {"error": "no database or schema to run the query on"}
    if a.error is not None:
        return {"error": a.error, "kind": a.error_kind}
    return {"columns": a.columns, "rows": a.rows, "n_rows": len(a.rows), "truncated": a.truncated}


if __name__ == "__main__":
    sys.exit(main())
