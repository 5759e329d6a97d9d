"""``convert``: a Text2SQL dataset in its original format -> train/valid/test JSONL.

    python -m mlx_text2sql.convert FORMAT INPUT --out DIR

FORMAT is ``wikisql``, ``nsql``, ``sql-create-context`` or ``spider`` (one converter each in
:mod:`mlx_text2sql.sources`); each yields the same :class:`~mlx_text2sql.example.Example`,
and :mod:`mlx_text2sql.conversion` turns Examples into records (the record's fields are listed
there). This module holds the flags and their checks.

Pure Python: no MLX import (transformers and datasets only when their flags are used).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The library's names, importable from the command module too.
from .conversion import (ANSWER_RESERVE, CHARS_PER_TOKEN, DEFAULT_SPLIT_MAP,  # noqa: F401
                         GOLD_TIME_LIMIT_S, REPORT_NAME, Fitted, GoldStats, Renderer, Settings,
                         Summary, assign_splits, check_gold, convert, fit_schema, json_line,
                         load_hf_splits, load_tokenizer, make_record, print_summary)
from .errors import ConfigError, run_cli
from .hints import DEFAULT_MAX_HINTS
from .prompting.selection import DEFAULT_MAX_TABLES
from .prompts import DEFAULT_SAMPLE_ROWS, get_template
from .sources import FORMATS
from .splits import SPLITS

EXAMPLES = """\
examples:
  # WikiSQL folder ({split}.jsonl + {split}.tables.jsonl): pool and split by table
  python -m mlx_text2sql.convert wikisql ../shared/datasets/wikisql --out data/wikisql
  # keep the official train/dev/test files as train/valid/test
  python -m mlx_text2sql.convert wikisql path/to/WikiSQL/data --keep-splits --out data/wikisql
  # Spider, its dev set as the test split, valid carved out of train by database
  python -m mlx_text2sql.convert spider path/to/spider --keep-splits --split-map dev=test --out data/spider
  # NSQL / sql-create-context (an empty SQLite database per schema checks the gold SQL runs)
  python -m mlx_text2sql.convert nsql nsql.jsonl --out data/nsql
  python -m mlx_text2sql.convert sql-create-context sqlqa.jsonl --valid-size 200 --test-size 200 --out data/scc
  # fully templated {"text": ...} records for TinyLlama, prompts cut to 512 tokens
  python -m mlx_text2sql.convert wikisql data/sample/wikisql --chat-template zephyr --max-tokens 512 --out data/zephyr
  # through the datasets library (a Hub name, a save_to_disk folder or local data files)
  python -m mlx_text2sql.convert sql-create-context --hf-dataset b-mc2/sql-create-context --out data/scc
  # the bundled sample (this is how data/train.jsonl etc. are made)
  python -m mlx_text2sql.convert wikisql data/sample/wikisql --keep-splits --out data --db-name sample.sqlite
"""


# --------------------------------------------------------------------------- arguments

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        # the console script sets argv[0] to "mlx-text2sql convert"
        prog=sys.argv[0] if sys.argv and sys.argv[0].startswith("mlx-text2sql") else "python -m mlx_text2sql.convert",
        description="Convert a Text2SQL dataset (WikiSQL, NSQL, sql-create-context, Spider) "
                    "into train/valid/test JSONL chat records whose gold SQL runs on SQLite.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("format", metavar="FORMAT", choices=list(FORMATS),
                   help=f"dataset format: {', '.join(FORMATS)}")
    p.add_argument("input", metavar="INPUT", nargs="?",
                   help="folder or file in the dataset's original format (or use --hf-dataset)")
    p.add_argument("--out", default="data",
                   help="output folder for train/valid/test.jsonl (default: data, where the bundled "
                        "sample's converted files live)")
    _input_options(p.add_argument_group("input"))
    _record_options(p.add_argument_group("output records"))
    _split_options(p.add_argument_group("splits"))
    _database_options(p.add_argument_group("databases"))
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def _input_options(g: argparse._ArgumentGroup) -> None:
    """Where the records come from and how bad ones are handled."""
    g.add_argument("--hf-dataset", metavar="NAME",
                   help="load records with the datasets library: a Hub name, a folder written by "
                        "save_to_disk, or local data files (.json/.jsonl/.parquet/.csv)")
    g.add_argument("--hf-split", metavar="S", help="only this split of the dataset (default: all)")
    g.add_argument("--hf-config", metavar="C", help="dataset configuration name, if it has several")
    g.add_argument("--tables", metavar="PATH",
                   help="tables file (WikiSQL *.tables.jsonl, Spider tables.json) when it is not "
                        "beside the input, or for --hf-dataset")
    g.add_argument("--databases", metavar="DIR",
                   help="Spider: folder of <db_id>/<db_id>.sqlite (default: INPUT/database)")
    g.add_argument("--limit", type=int, metavar="N", help="at most N examples from each input file")
    g.add_argument("--strict", action="store_true",
                   help="stop at the first bad record (default: skip it and report it at the end)")


def _record_options(g: argparse._ArgumentGroup) -> None:
    """What each record holds: its form, schema, hints and size."""
    g.add_argument("--format", dest="record_format", choices=["messages", "text", "prompt-completion"],
                   help="messages (default), text (needs --chat-template or --model) or "
                        "prompt-completion")
    g.add_argument("--chat-template", metavar="NAME",
                   help="render records with a built-in template: chatml, zephyr (TinyLlama), "
                        "mistral ([INST]), llama2, plain")
    g.add_argument("--model", metavar="M",
                   help="render records with the chat template of this local Hugging Face model "
                        "folder's tokenizer (also counts tokens for --max-tokens)")
    g.add_argument("--sample-rows", type=int, default=DEFAULT_SAMPLE_ROWS, metavar="N",
                   help=f"sample rows per table in the prompt (default {DEFAULT_SAMPLE_ROWS}; 0: none)")
    g.add_argument("--value-hints", action="store_true",
                   help="add a 'Values:' line naming the database cells the question mentions and "
                        "their columns (schema and value linking for small models; generate --db "
                        "adds the same line for adapters trained on such records)")
    g.add_argument("--max-hints", type=int, default=DEFAULT_MAX_HINTS, metavar="N",
                   help=f"with --value-hints: at most N cells per question (default {DEFAULT_MAX_HINTS})")
    g.add_argument("--max-tokens", type=int, metavar="N",
                   help="fit each example (prompt + SQL) in N tokens by dropping tables the SQL does "
                        "not use, then sample rows; examples that still do not fit are dropped. "
                        f"Counted with --tokenizer/--model, else as characters / {CHARS_PER_TOKEN}")
    g.add_argument("--tokenizer", metavar="PATH", help="tokenizer (local folder) for --max-tokens")
    g.add_argument("--select-tables", action="store_true",
                   help="show each question only the tables it needs, chosen from the question and "
                        "the database alone (schema selection, as generate --db does); training "
                        "records also keep the tables their gold SQL uses")
    g.add_argument("--max-tables", type=int, default=DEFAULT_MAX_TABLES, metavar="N",
                   help=f"with --select-tables: at most N best-matching tables, plus the tables "
                        f"joining them (default {DEFAULT_MAX_TABLES})")


def _split_options(g: argparse._ArgumentGroup) -> None:
    """How examples are divided into train, valid and test."""
    g.add_argument("--valid-fraction", type=float, default=0.1, metavar="F",
                   help="fraction of examples for valid (default 0.1)")
    g.add_argument("--test-fraction", type=float, default=0.1, metavar="F",
                   help="fraction of examples for test (default 0.1)")
    g.add_argument("--valid-size", type=int, metavar="N", help="examples for valid (overrides the fraction)")
    g.add_argument("--test-size", type=int, metavar="N", help="examples for test (overrides the fraction)")
    g.add_argument("--seed", type=int, default=0, help="seed of the split and of the train order (default 0)")
    g.add_argument("--keep-splits", action="store_true",
                   help="keep the official split files (train*->train, dev/validation->valid, "
                        "test->test); an output split with no file is carved out of train by group")
    g.add_argument("--split-map", action="append", default=[], metavar="NAME=SPLIT",
                   help="with --keep-splits: send official split NAME to train, valid or test "
                        "(repeatable), e.g. dev=test")


def _database_options(g: argparse._ArgumentGroup) -> None:
    """The SQLite databases built and the gold SQL check."""
    g.add_argument("--db-name", default=None, metavar="FILE",
                   help="WikiSQL: file name of the SQLite database written in --out (default wikisql.sqlite)")
    g.add_argument("--no-build-db", dest="build_db", action="store_false",
                   help="NSQL / sql-create-context: do not build an empty SQLite database per schema")
    g.add_argument("--no-check-gold", dest="check_gold", action="store_false",
                   help="do not execute the gold SQL to count errors and empty results")


def settings_from_args(ns: argparse.Namespace) -> Settings:
    """Check every option, raising one :class:`ConfigError` listing all problems."""
    problems = []
    if ns.input is None and ns.hf_dataset is None:
        problems.append("give INPUT (a file or folder) or --hf-dataset NAME")
    if ns.input is not None and ns.hf_dataset is not None:
        problems.append("give either INPUT or --hf-dataset, not both")
    if ns.hf_split and not ns.hf_dataset:
        problems.append("--hf-split only applies with --hf-dataset")
    if ns.limit is not None and ns.limit < 1:
        problems.append(f"--limit must be at least 1, got {ns.limit}")
    if ns.max_hints < 1:
        problems.append(f"--max-hints must be 1 or more, got {ns.max_hints}")
    if ns.sample_rows < 0:
        problems.append(f"--sample-rows must be 0 or more, got {ns.sample_rows}")
    if ns.max_tokens is not None and ns.max_tokens < 16:
        problems.append(f"--max-tokens must be at least 16, got {ns.max_tokens}")
    if ns.max_tables < 1:
        problems.append(f"--max-tables must be 1 or more, got {ns.max_tables}")
    if ns.tokenizer and ns.max_tokens is None:
        problems.append("--tokenizer is only used with --max-tokens")
    for name in ("valid_fraction", "test_fraction"):
        v = getattr(ns, name)
        if not 0.0 <= v < 1.0:
            problems.append(f"--{name.replace('_', '-')} must be in [0, 1), got {v}")
    if ns.valid_fraction + ns.test_fraction >= 1.0 and ns.valid_size is None and ns.test_size is None:
        problems.append("--valid-fraction + --test-fraction must leave something for train")
    for name in ("valid_size", "test_size"):
        v = getattr(ns, name)
        if v is not None and v < 0:
            problems.append(f"--{name.replace('_', '-')} must be 0 or more, got {v}")
    if ns.chat_template and ns.model:
        problems.append("give either --chat-template or --model (whose tokenizer has its template)")
    if ns.chat_template:
        try:
            get_template(ns.chat_template)
        except ConfigError as e:
            problems.extend(e.problems)
    record_format = ns.record_format or ("text" if (ns.chat_template or ns.model) else "messages")
    if record_format == "text" and not (ns.chat_template or ns.model):
        problems.append("--format text needs --chat-template NAME or --model PATH")
    split_map = {}
    for item in ns.split_map:
        name, sep, target = item.partition("=")
        if not sep or not name or target not in SPLITS:
            problems.append(f"--split-map {item!r}: expected NAME=train, NAME=valid or NAME=test")
        else:
            split_map[name] = target
    if split_map and not ns.keep_splits:
        problems.append("--split-map only applies with --keep-splits")
    if ns.db_name is not None and (not ns.db_name or Path(ns.db_name).name != ns.db_name):
        problems.append(f"--db-name must be a plain file name, got {ns.db_name!r}")
    if problems:
        raise ConfigError(problems)
    return Settings(
        format=ns.format, input=ns.input, out=Path(ns.out), hf_dataset=ns.hf_dataset,
        hf_split=ns.hf_split, hf_config=ns.hf_config, tables=ns.tables, databases=ns.databases,
        limit=ns.limit, strict=ns.strict, record_format=record_format,
        chat_template=ns.chat_template, model=ns.model, sample_rows=ns.sample_rows,
        value_hints=ns.value_hints, max_hints=ns.max_hints, max_tokens=ns.max_tokens, tokenizer=ns.tokenizer,
        select_tables=ns.select_tables, max_tables=ns.max_tables, valid_fraction=ns.valid_fraction,
        test_fraction=ns.test_fraction, valid_size=ns.valid_size, test_size=ns.test_size,
        seed=ns.seed, keep_splits=ns.keep_splits, split_map=split_map,
        db_name=ns.db_name or "wikisql.sqlite", build_db=ns.build_db, check_gold=ns.check_gold,
        progress=ns.progress)


def _main(argv: list[str] | None) -> int:
    try:
        ns = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse already printed
        return int(e.code or 0)
    s = settings_from_args(ns)
    summary = convert(s)
    print_summary(s, summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the exit code (typed errors print one line on stderr)."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
