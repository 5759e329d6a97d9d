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
from pathlib import Path
from typing import Any

from .errors import ConfigError, InputError, run_cli

EPILOG = """examples:
  # ask the bundled sample database, run the query
  python -m mlx_text2sql.generate --db data/sample.sqlite --question "which airport in san solano ranks below 3?" --execute
  # with a trained adapter (its base model is read from adapter_config.json)
  python -m mlx_text2sql.generate --adapter-path adapters --schema "CREATE TABLE singer (name TEXT, age INT)" \\
      --question "how many singers are older than 30?"
  # a whole test file, batched
  python -m mlx_text2sql.generate --adapter-path adapters --input data/test.jsonl --output predictions.jsonl
"""

DEFAULT_MAX_TOKENS = 160


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlx-text2sql generate", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--model", default=None,
                   help="model spec: smollm2-135m (built in), a folder, a .gguf file or a Hub id; "
                        "default: the adapter's base model, else smollm2-135m")
    m.add_argument("--adapter-path", default=None, help="LoRA adapter folder written by train")
    m.add_argument("--chat-template", default=None, help="override the chat template (registry name)")
    m.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="weights dtype (default: float32 on CPU, else as trained/stored)")
    m.add_argument("--dequantize", action="store_true", default=None,
                   help="run a quantized model dense (default on CPU, where it is faster)")
    m.add_argument("--keep-quantized", dest="dequantize", action="store_false",
                   help="keep quantized layers quantized")
    m.add_argument("--no-merge-adapter", dest="merge_adapter", action="store_false", default=True,
                   help="keep the adapter's LoRA layers separate (default: a dense base gets the "
                        "adapter folded into its weights, the same numbers computed with fewer operations)")

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
    g.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                   help=f"longest reply in tokens (default {DEFAULT_MAX_TOKENS})")
    g.add_argument("--temp", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default 1: off)")
    g.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    g.add_argument("--batch-size", type=int, default=16, help="prompts decoded together (default 16)")
    g.add_argument("--stream", action="store_true",
                   help="show the reply on stderr as it is generated (stdout still gets only the SQL)")
    g.add_argument("--show-prompt", action="store_true", help="print the full prompt to stderr")

    e = p.add_argument_group("execution")
    e.add_argument("--execute", action="store_true", help="run the SQL on --db (read-only) and print the result")
    e.add_argument("--fix-values", action="store_true",
                   help="value repair against the database (--db, or a record's db_path): a "
                        "column = 'text' whose text is no cell of that column but a near miss of one "
                        "cell gets that cell's text (changes are noted on stderr)")
    e.add_argument("--exec-guided", type=int, default=0, metavar="N",
                   help="execution-guided decoding against the database (--db, or a record's db_path): "
                        "a greedy query that fails there (an error, or no rows) is replaced by the "
                        "result most of N sampled replies agree on (changes are noted on stderr; default 0: off)")
    e.add_argument("--guided-temp", type=float, default=0.7,
                   help="sampling temperature of --exec-guided (default 0.7)")
    e.add_argument("--max-rows", type=int, default=20, help="result rows shown (default 20)")
    e.add_argument("--timeout", type=float, default=5.0, help="seconds the query may run (default 5)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or timing notes")
    return p


def main(argv: list[str] | None = None) -> int:
    from .blas import ensure_fast_blas

    ensure_fast_blas(quiet=True)
    return run_cli(_main, argv)


# --------------------------------------------------------------------------- settings

def _validate(args) -> None:
    problems = []
    given = [name for name, v in (("--schema", args.schema), ("--schema-file", args.schema_file),
                                  ("--db", args.db)) if v is not None]
    if len(given) > 1:
        problems.append(f"give one schema source, not {' and '.join(given)}")
    if args.tables is not None and args.db is None:
        problems.append("--tables needs --db")
    if args.sample_rows is not None and args.sample_rows < 0:
        problems.append("--sample-rows must be 0 or more")
    if args.question is not None and args.input is not None:
        problems.append("give --question or --input, not both")
    if args.output is not None and args.input is None:
        problems.append("--output needs --input")
    if args.max_tokens < 1:
        problems.append("--max-tokens must be at least 1")
    if args.batch_size < 1:
        problems.append("--batch-size must be at least 1")
    if args.temp < 0:
        problems.append("--temp must be 0 or more")
    if not 0 < args.top_p <= 1:
        problems.append("--top-p must be in (0, 1]")
    if args.max_rows < 1:
        problems.append("--max-rows must be at least 1")
    if args.exec_guided < 0:
        problems.append("--exec-guided must be 0 (off) or a number of samples")
    if args.exec_guided and args.guided_temp <= 0:
        problems.append("--guided-temp must be above 0 (the alternatives are sampled)")
    if args.exec_guided and args.db is None and args.input is None:
        problems.append("--exec-guided needs --db (the database the queries are checked on)")
    if args.execute and args.db is None and args.input is None:
        problems.append("--execute needs --db (the database to run the SQL on)")
    if args.adapter_path is not None and not Path(args.adapter_path).is_dir():
        problems.append(f"--adapter-path {args.adapter_path}: no such folder")
    if problems:
        raise ConfigError(problems)


def _log(args, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


class Schemas:
    """Schema text for each question: the command's --schema/--schema-file, or a database
    (--db, or a record's db_path) read once per (file, tables); with no --tables, the tables
    the question is about are picked per question (:func:`schema_db.select_tables`)."""

    def __init__(self, args, sample_rows: int, value_hints: bool = False,
                 max_hints: int | None = None):
        self.args = args
        self.sample_rows = sample_rows
        self.value_hints = value_hints
        self.max_hints = max_hints
        self._indexes: dict[str, Any] = {}
        self._db_cache: dict[tuple, str] = {}
        self._logged: set[tuple] = set()
        self.fixed: str | None = None
        self.db: Path | None = None
        self.tables: list[str] | None = None  # None: pick per question; [] : every table
        if args.schema is not None:
            self.fixed = self._checked(args.schema, "--schema")
        elif args.schema_file is not None:
            path = Path(args.schema_file)
            if not path.is_file():
                raise InputError("schema file not found", str(path))
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"not UTF-8 text ({e.reason})", str(path)) from None
            self.fixed = self._checked(text, str(path))
        elif args.db is not None:
            from .schema_db import list_tables, read_tables

            self.db = Path(args.db)
            self.tables = parse_tables(args.tables)
            if self.tables:
                read_tables(self.db, self.tables, 0)  # unknown names fail now, not after loading
            else:
                list_tables(self.db)  # a missing or broken file fails now

    @property
    def available(self) -> bool:
        return self.fixed is not None or self.db is not None

    def for_question(self, question: str) -> str:
        """The schema text to ask ``question`` over (--schema/--schema-file/--db)."""
        if self.fixed is not None:
            return self.fixed
        if self.db is None:
            raise ConfigError("no schema: give --schema, --schema-file or --db")
        return self.from_db(self.db, self.tables, question)

    @staticmethod
    def _checked(text: str, where: str) -> str:
        from .schema_db import validate_schema_text

        validate_schema_text(text, where)
        return text.strip()

    def from_db(self, path: Path, tables: list[str] | None, question: str = "") -> str:
        """Schema text of ``tables`` of the database (``[]``: all; None: those ``question``
        is about)."""
        from .schema_db import schema_from_db

        tables = self._tables_for(path, tables, question)
        key = (str(path.resolve()), tuple(tables) if tables else None)
        if key not in self._db_cache:
            self._db_cache[key] = schema_from_db(path, tables or None, self.sample_rows)
        return self._db_cache[key]

    def _tables_for(self, path: Path, tables: list[str] | None, question: str) -> list[str]:
        from .schema_db import select_tables

        if tables is None:
            tables, why = select_tables(path, question)
            key = (str(path), why)
            if key not in self._logged:
                self._logged.add(key)
                _log(self.args, f"[generate] {path}: asking over {why}; --tables names them yourself")
        return tables

    def hints(self, path: Path | None, tables: list[str] | None, question: str) -> str | None:
        """The value hints line for ``question`` over ``tables`` of the database at ``path``
        (None when hints are off or there is no database)."""
        if not self.value_hints or path is None:
            return None
        from .hints import DEFAULT_MAX_HINTS, ValueIndex
        from .schema_db import list_tables, read_tables

        tables = self._tables_for(path, tables, question)
        names = [t.name for t in read_tables(path, tables, 0)] if tables else list_tables(path)
        key = str(path.resolve())
        if key not in self._indexes:
            self._indexes[key] = ValueIndex(path)
        return self._indexes[key].hint_text(question, names, self.max_hints or DEFAULT_MAX_HINTS)

    def messages(self, question: str, system: str) -> list[dict[str, str]]:
        """The prompt for ``question`` over the command's schema (and its value hints)."""
        from .prompts import build_messages

        schema = self.for_question(question)
        hints = self.hints(self.db, self.tables, question) if self.fixed is None else None
        return build_messages(question, schema, system=system, hints=hints)


def parse_tables(value: str | None) -> list[str] | None:
    """--tables: None (or "auto") = pick per question, "all" = [], else the names given."""
    if value is None or value.strip().lower() == "auto":
        return None
    if value.strip().lower() == "all":
        return []
    names = [t.strip() for t in value.split(",") if t.strip()]
    if not names:
        raise ConfigError("--tables names no table (give names, 'all' or 'auto')")
    return names


# --------------------------------------------------------------------------- model

def load(args):
    """The model (+ adapter) the arguments name, with CPU-friendly defaults."""
    from .models.load import default_train_dequantize
    from .tuner.lora import load_with_adapter

    kw = {}
    on_cpu = default_train_dequantize(log_choice=False)
    if args.dtype:
        kw["dtype"] = args.dtype
    elif on_cpu:
        kw["dtype"] = "float32"  # float16/bfloat16 matmuls are slower than float32 on CPUs
    if args.dequantize is not None:
        kw["dequantize"] = args.dequantize
    elif on_cpu:
        kw["dequantize"] = True  # MLX's CPU quantized matmul is far slower than dense float32
    if args.chat_template:
        kw["chat_template"] = args.chat_template
    t = time.perf_counter()
    loaded = load_with_adapter(args.adapter_path, model=args.model,
                               merge=getattr(args, "merge_adapter", True), **kw)
    adapter = f" + adapter {args.adapter_path}" if args.adapter_path else ""
    _log(args, f"[generate] loaded {loaded.spec}{adapter} in {time.perf_counter() - t:.1f}s")
    return loaded


def _trained_prompt_settings(args) -> dict:
    """The prompt settings the model was trained with (sample rows, system prompt): from the
    adapter's config, or from the info ``fuse`` leaves in a fused model folder."""
    prompt = None
    if args.adapter_path:
        from .tuner.lora import read_adapter_config

        prompt = read_adapter_config(args.adapter_path).get("prompt")
    elif args.model and (Path(args.model) / "mlx_text2sql_fuse.json").is_file():
        try:
            info = json.loads((Path(args.model) / "mlx_text2sql_fuse.json").read_text(encoding="utf-8"))
            prompt = info.get("prompt") if isinstance(info, dict) else None
        except (OSError, ValueError):
            prompt = None  # a damaged note only costs the defaults
    return prompt if isinstance(prompt, dict) else {}


# --------------------------------------------------------------------------- main

def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    _validate(args)
    from .prompts import DEFAULT_SAMPLE_ROWS, SYSTEM_PROMPT, build_messages

    # Cheap checks (schema, database, input file) before the model loads.
    trained = _trained_prompt_settings(args)
    sample_rows = args.sample_rows
    if sample_rows is None:
        sample_rows = trained.get("sample_rows")
        sample_rows = DEFAULT_SAMPLE_ROWS if not isinstance(sample_rows, int) else sample_rows
    system = trained.get("system_prompt") if isinstance(trained.get("system_prompt"), str) else SYSTEM_PROMPT
    value_hints = args.value_hints
    if value_hints is None:
        value_hints = bool(trained.get("value_hints"))
    max_hints = trained.get("max_hints") if isinstance(trained.get("max_hints"), int) else None
    schemas = Schemas(args, sample_rows, value_hints, max_hints)

    if args.input is not None:
        jobs = _read_input(Path(args.input), schemas, system)
        loaded = load(args)
        return _run_batch(args, loaded, jobs)

    questions: list[str] | None = None
    if args.question is not None:
        questions = [args.question]
    elif not sys.stdin.isatty():
        questions = [line.strip() for line in sys.stdin if line.strip()]
        if not questions:
            raise ConfigError("no question: give --question, --input, or questions on stdin (one per line)")
    if not schemas.available:
        raise ConfigError("no schema: give --schema, --schema-file or --db")
    prompts = None
    if questions is not None:
        # Schema problems (and table choices) show before the model loads.
        prompts = [schemas.messages(q, system) for q in questions]
    loaded = load(args)
    if questions is None:
        return _interactive(args, loaded, schemas, system)
    return _answer(args, loaded, questions, prompts)


def _engine(loaded):
    from .engine import SQLGenerator

    return SQLGenerator(loaded)


def _answer(args, loaded, questions: list[str], prompts: list[list[dict]]) -> int:
    """Answer questions; SQL (and results) on stdout. Exit 1 when a reply held no SQL, 2 when
    --execute failed."""
    gen = _engine(loaded)
    if args.show_prompt:
        for p in prompts:
            print(gen.prompt_text(p), file=sys.stderr, flush=True)
    stream = None
    if args.stream and len(prompts) == 1:
        def stream(_i: int, piece: str) -> None:
            sys.stderr.write(piece)
            sys.stderr.flush()
    bar = _bar(args, len(prompts))
    t = time.perf_counter()
    results = gen.generate(prompts, max_tokens=args.max_tokens, temp=args.temp, top_p=args.top_p,
                           seed=args.seed, batch_size=args.batch_size, stream_callback=stream,
                           progress=bar.update if bar else None)
    if bar:
        bar.close()
    if stream:
        sys.stderr.write("\n")
    wall = time.perf_counter() - t
    n_tok = sum(r.n_tokens for r in results)
    _log(args, f"[generate] {len(results)} question(s), {n_tok} tokens in {wall:.2f}s")
    sqls = _final_sqls(args, gen, prompts, results, [args.db] * len(results), questions,
                       [""] * len(results))
    status = 0
    for q, r, sql in zip(questions, results, sqls):
        status = max(status, _emit(args, q, r, sql))
    return status


def _final_sqls(args, gen, prompts, results, dbs, questions, wheres, choices_out=None) -> list[str]:
    """Each reply's SQL after value repair (--fix-values) and execution-guided decoding
    (--exec-guided), both against the question's database; what changed is noted on stderr.
    ``choices_out`` receives the guide's choices (None per reply when it is off)."""
    sqls = [_repaired(args, r.sql, db, q, w) if r.sql else r.sql
            for r, db, q, w in zip(results, dbs, questions, wheres)]
    if not getattr(args, "exec_guided", 0):
        if choices_out is not None:
            choices_out.extend([None] * len(sqls))
        return sqls
    from .guided import ExecutionGuide, Item

    if getattr(args, "_guide", None) is None:
        repairer = None
        if getattr(args, "fix_values", False):
            from .repair import Repairer

            repairer = args._repairer = getattr(args, "_repairer", None) or Repairer()
        args._guide = ExecutionGuide(gen, samples=args.exec_guided, temp=args.guided_temp, top_p=0.95,
                                     seed=args.seed or 0, max_tokens=args.max_tokens,
                                     batch_size=args.batch_size, timeout_s=args.timeout, repairer=repairer)
    items = [Item(p, sql or "", str(db) if db is not None else None, q)
             for p, sql, db, q in zip(prompts, sqls, dbs, questions)]
    bars = []

    def announce(n: int) -> None:  # batch runs: a bar for the replies sampled for failed queries
        if len(items) > 1 and not getattr(args, "quiet", False):
            from tqdm import tqdm

            bars.append(tqdm(total=n, desc="sampling for failed queries", unit="reply", file=sys.stderr))

    try:
        choices = args._guide.refine(items, progress=lambda k: [b.update(k) for b in bars], announce=announce)
    finally:
        for b in bars:
            b.close()
    for c, w in zip(choices, wheres):
        if c.reason is None:
            continue
        what = {"error": "failed", "empty": "returned no rows"}[c.reason]
        if c.changed:
            _log(args, f"[generate] {w}execution-guided: the greedy query {what}; {c.usable} of {c.samples} "
                       f"sampled queries ran, {c.votes} agree on the result: {c.sql}")
        else:
            _log(args, f"[generate] {w}execution-guided: the greedy query {what}, and none of {c.samples} "
                       "sampled queries returned rows; keeping it")
    if choices_out is not None:
        choices_out.extend(choices)
    return [c.sql for c in choices]


def _repaired(args, sql: str, db, question: str, where: str = "") -> str:
    """``sql`` after value repair (--fix-values) against ``db``; each change noted on stderr."""
    if not getattr(args, "fix_values", False) or not sql or db is None:
        return sql
    if getattr(args, "_repairer", None) is None:
        from .repair import Repairer

        args._repairer = Repairer()
    fixed, fixes = args._repairer.fix(sql, db, question)
    for f in fixes:
        _log(args, f"[generate] {where}value repair: {f.column} = {f.old!r} -> {f.new!r} "
                   f"(a cell of {f.table}, similarity {f.ratio:.2f})")
    return fixed


def _emit(args, question: str, r, sql: str | None = None) -> int:
    if args.stream and r.finish_reason == "length":
        print(f"note: the reply hit --max-tokens ({args.max_tokens})", file=sys.stderr)
    if not (sql if sql is not None else r.sql):
        print(f"no SQL query in the model's reply to {question!r}: {r.text.strip()[:200]!r}",
              file=sys.stderr)
        print("", flush=True)
        return 1
    if sql is None:
        sql = _repaired(args, r.sql, args.db, question)
    print(sql, flush=True)
    if args.execute:
        return _execute(args, sql)
    return 0


def _execute(args, sql: str) -> int:
    from .errors import SQLExecutionError
    from .sqlexec import execute, format_table

    try:
        result = execute(args.db, sql, timeout_s=args.timeout, max_rows=args.max_rows, truncate=True)
    except SQLExecutionError as e:
        print(f"error: the query failed on {args.db}: {e}", file=sys.stderr)
        return 2
    print(format_table(result, max_rows=args.max_rows), flush=True)
    return 0


def _bar(args, total: int):
    if args.quiet or total < 2:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="generating", unit="q", file=sys.stderr)


def _interactive(args, loaded, schemas: Schemas, system: str) -> int:
    """Read questions from the terminal until EOF / 'exit'; the schema's prefix cache is kept
    between questions, so each one only pays for its own tokens."""
    from .prompts import build_messages

    gen = _engine(loaded)
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
            prompt = schemas.messages(question, system)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            continue
        if args.show_prompt:
            print(gen.prompt_text(prompt), file=sys.stderr)
        stream = None
        if args.stream:
            def stream(_i: int, piece: str) -> None:
                sys.stderr.write(piece)
                sys.stderr.flush()
        t = time.perf_counter()
        [r] = gen.generate([prompt], max_tokens=args.max_tokens, temp=args.temp, top_p=args.top_p,
                           seed=args.seed, stream_callback=stream)
        if stream:
            sys.stderr.write("\n")
        [sql] = _final_sqls(args, gen, [prompt], [r], [args.db], [question], [""])
        _emit(args, question, r, sql)
        _log(args, f"[{r.n_tokens} tokens, {time.perf_counter() - t:.2f}s]")


# --------------------------------------------------------------------------- batch mode

class _Job:
    __slots__ = ("record", "messages", "db_path", "where")

    def __init__(self, record: dict, messages: list[dict], db_path: Path | None, where: str):
        self.record = record
        self.messages = messages
        self.db_path = db_path
        self.where = where


def _read_input(path: Path, schemas: Schemas, system: str) -> list[_Job]:
    """Every record of ``path`` as a prompt (and the database it may run on)."""
    from .jsonl import iter_jsonl
    from .prompts import build_messages, record_messages

    jobs = []
    for lineno, rec in iter_jsonl(path):
        where = f"{path}:{lineno}"
        db_path = None
        if isinstance(rec.get("db_path"), str) and rec["db_path"]:
            db_path = Path(rec["db_path"])
            if not db_path.is_absolute():
                db_path = path.parent / db_path  # relative to the JSONL's folder, as convert writes
        elif schemas.db is not None:
            db_path = schemas.db
        if "messages" in rec:
            try:
                msgs = record_messages(rec)
            except (KeyError, TypeError, AttributeError) as e:
                raise InputError(f"malformed 'messages' ({e})", str(path), lineno) from None
            if not msgs or not isinstance(msgs[-1], dict) or msgs[-1].get("role") != "user":
                raise InputError("'messages' must end with the user turn (or a user turn + the assistant's answer)",
                                 str(path), lineno)
        else:
            question = rec.get("question")
            if not isinstance(question, str) or not question.strip():
                raise InputError("record needs a non-empty 'question' (or 'messages')", str(path), lineno)
            schema = rec.get("schema")
            hints = rec.get("hints") if isinstance(rec.get("hints"), str) else None
            if isinstance(schema, str) and schema.strip():
                schema = schema.strip()
            elif db_path is not None:
                tables = rec.get("tables") or ([rec["table"]] if rec.get("table") else None)
                if tables is None and not rec.get("db_path"):
                    tables = schemas.tables  # the command's --db: its --tables choice
                try:
                    schema = schemas.from_db(db_path, tables, question)
                    if hints is None:
                        hints = schemas.hints(db_path, tables, question)
                except InputError as e:
                    raise InputError(f"record's database: {e}", str(path), lineno) from None
            elif schemas.fixed is not None:
                schema = schemas.fixed
            else:
                raise InputError("record has no 'schema' or 'db_path', and no --schema/--db was given",
                                 str(path), lineno)
            msgs = build_messages(question, schema, system=system, hints=hints)
        jobs.append(_Job(rec, msgs, db_path, where))
    if not jobs:
        raise InputError("no records", str(path))
    return jobs


def _run_batch(args, loaded, jobs: list[_Job]) -> int:
    from .jsonl import atomic_open

    gen = _engine(loaded)
    if args.show_prompt:
        print(gen.prompt_text(jobs[0].messages), file=sys.stderr)
    bar = _bar(args, len(jobs))
    t = time.perf_counter()
    results = gen.generate([j.messages for j in jobs], max_tokens=args.max_tokens, temp=args.temp,
                           top_p=args.top_p, seed=args.seed, batch_size=args.batch_size,
                           progress=bar.update if bar else None)
    if bar:
        bar.close()
    wall = time.perf_counter() - t
    out_records = []
    failed = 0
    choices: list = []
    sqls = _final_sqls(args, gen, [j.messages for j in jobs], results, [j.db_path for j in jobs],
                       [str(j.record.get("question") or "") for j in jobs], [f"{j.where}: " for j in jobs],
                       choices)
    for job, r, sql, choice in zip(jobs, results, sqls, choices):
        rec = dict(job.record)
        rec.update({"prediction": sql, "reply": r.text, "n_tokens": r.n_tokens,
                    "finish_reason": r.finish_reason})
        if sql != r.sql:
            rec["prediction_raw"] = r.sql
        if choice is not None and choice.reason is not None:
            rec["guided"] = choice.as_json()
        if args.execute:
            rec["execution"] = _execute_record(job, sql, args)
            failed += "error" in rec["execution"]
        out_records.append(rec)
    if args.output:
        with atomic_open(args.output) as f:
            for rec in out_records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    else:
        for rec in out_records:
            print(json.dumps(rec, ensure_ascii=False))
    empty = sum(not r.sql for r in results)
    n_tok = sum(r.n_tokens for r in results)
    _log(args, f"[generate] {len(jobs)} records in {wall:.1f}s ({len(jobs) / max(wall, 1e-9):.2f} queries/s, "
               f"{n_tok / max(wall, 1e-9):.1f} tokens/s); {empty} replies without SQL"
               + (f"; {failed} queries failed" if args.execute else "")
               + (f"; predictions in {args.output}" if args.output else ""))
    return 0


def _execute_record(job: _Job, sql: str, args) -> dict:
    """Run a prediction on the record's database (or, for schema-only records, on an empty
    database built from its schema); a JSON-friendly preview or the error."""
    from .sqlexec import try_execute

    if not sql:
        return {"error": "no SQL in the reply"}
    schema = job.record.get("schema") if isinstance(job.record.get("schema"), str) else None
    if job.db_path is None and schema is None:
        return {"error": "no database or schema to run the query on"}
    outcome = try_execute(job.db_path, sql, schema_sql=schema, timeout_s=args.timeout,
                          max_rows=args.max_rows, truncate=True)
    if not outcome.ok:
        return {"error": str(outcome.error), "kind": outcome.error.kind}
    return outcome.result.preview(args.max_rows)

if __name__ == "__main__":
    sys.exit(main())
