"""One conversion from start to end: read the source, assign splits, check the gold SQL, build
each record (schema selection, value hints, fitting) and write the files atomically.

Pure Python: no MLX import.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import replace

from ..example import Example, Table
from ..hints import ValueIndex
from ..prompting.selection import prune, recall, select_tables, training_tables
from ..sources import SourceOptions, get_source
from ..sources.databases import tables_in_sql
from ..sources.reading import Problems
from ..sources.staging import SourceResult
from ..splits import SPLITS
from .fitting import fit_schema
from .gold import check_gold
from .hf_datasets import load_hf_splits
from .records import Renderer, json_line, load_tokenizer, make_record, write_lines
from .report import REPORT_NAME, Summary
from .settings import Settings
from .splitting import assign_splits


class _Linking:
    """Value hints and schema selection for examples, each database's value index opened once
    (from the staged file) and closed by :meth:`close`."""

    def __init__(self, result: SourceResult, s: Settings):
        self.result = result
        self.s = s
        self.indexes: dict[str, ValueIndex] = {}

    def index(self, ex: Example) -> ValueIndex | None:
        if not ex.db_path:
            return None
        if ex.db_path not in self.indexes:
            self.indexes[ex.db_path] = ValueIndex(self.result.staging.current(ex.db_path))
        return self.indexes[ex.db_path]

    def hint_text(self, ex: Example, tables: list[Table]) -> str:
        """The example's value hints, read from its (staged) database; "" without one."""
        vi = self.index(ex)
        return vi.hint_text(ex.question, [t.name for t in tables], self.s.max_hints) if vi else ""

    def selected(self, ex: Example):
        """Schema selection for ``ex`` from its question and database (no gold query)."""
        vi = self.index(ex)
        names = [t.name for t in ex.tables]
        cells = [h.table for h in vi.hints(ex.question, names, self.s.max_hints)] if vi else []
        return select_tables(ex.question, ex.tables, cells, max_tables=self.s.max_tables)

    def close(self) -> None:
        for index in self.indexes.values():
            index.close()


def _record(ex: Example, split: str, s: Settings, renderer: Renderer, hint_text, selected,
            summary: Summary) -> dict | None:
    """One example's record: schema selection, value hints, fitting (None: does not fit).

    Only a training record's prompt may depend on its gold SQL (its tables are added to the
    selection, and fitting keeps them); valid and test prompts come from the question and the
    database alone, exactly as ``generate`` builds them."""
    train = split == "train"
    selection = None
    if s.select_tables and len(ex.tables) > 1:
        selection = selected(ex)
        gold = tables_in_sql(ex.sql, ex.tables)
        keep = training_tables(selection, ex.tables, gold) if train else selection.tables
        summary.selection.setdefault(split, [0, 0])
        summary.selection[split][0] += 1
        summary.selection[split][1] += recall(selection.tables, gold)
        ex = replace(ex, tables=prune(ex.tables, keep), meta={**ex.meta, "tables_shown": len(keep)})
    drop_order = None
    if selection is not None and selection.scores:
        drop_order = sorted((t.name for t in ex.tables), key=lambda n: selection.scores.get(n, 0.0))
    hints = hint_text(ex, ex.tables) if s.value_hints else None
    fit = fit_schema(ex, s.sample_rows, s.max_tokens, renderer.count, hints,
                     use_gold=train, drop_order=drop_order)
    if fit is None:
        summary.too_long.append(ex.id or "?")
        return None
    fitted, trimmed = fit
    if s.value_hints and fitted.dropped_tables:
        hints = hint_text(ex, fitted.tables)
    rec = make_record(ex, fitted, renderer, s.out, hints)
    if trimmed:
        summary.trimmed += 1
        rec["meta"]["trimmed"] = {"dropped_tables": fitted.dropped_tables,
                                  "sample_rows": fitted.sample_rows}
    return rec


def _renderer(s: Settings) -> Renderer:
    """The record renderer, with the tokenizers ``--model`` and ``--tokenizer`` name."""
    model_tok = load_tokenizer(s.model) if s.model else None
    counter = None
    if s.max_tokens is not None:
        counter = load_tokenizer(s.tokenizer) if s.tokenizer else model_tok
    return Renderer(s.record_format, s.chat_template, model_tok, counter)


def _records(split_examples: dict[str, list[Example]], s: Settings, renderer: Renderer,
             linking: _Linking, summary: Summary) -> dict[str, list[dict]]:
    """Every split's records (train shuffled with ``s.seed``); counts go to ``summary``."""
    from tqdm import tqdm

    records: dict[str, list[dict]] = {}
    bar = tqdm(total=sum(map(len, split_examples.values())), desc="writing records", unit=" ex",
               leave=False, disable=not s.progress, dynamic_ncols=True)
    for split in SPLITS:
        recs = []
        for ex in split_examples[split]:
            bar.update(1)
            rec = _record(ex, split, s, renderer, linking.hint_text, linking.selected, summary)
            if rec is not None:
                recs.append(rec)
        if split == "train":
            random.Random(s.seed).shuffle(recs)
        records[split] = recs
        summary.counts[split] = len(recs)
        summary.groups[split] = len({ex.split_key for ex in split_examples[split]})
    bar.close()
    return records


def convert(s: Settings) -> Summary:
    """Run a conversion with validated settings; returns what happened (also written to
    ``out/convert_report.json``). Raises :class:`InputError` on the first bad record when
    ``s.strict``; output files are only replaced once everything succeeded."""
    start = time.perf_counter()
    source = get_source(s.format)
    options = SourceOptions(out_dir=str(s.out), sample_rows=s.sample_rows, limit=s.limit,
                            db_name=s.db_name, build_db=s.build_db, tables=s.tables,
                            databases=s.databases, progress=s.progress)
    problems = Problems(strict=s.strict)
    renderer = _renderer(s)
    if s.hf_dataset:
        splits = load_hf_splits(s.hf_dataset, s.hf_split, s.hf_config)
        result = source.read_hf(splits, options, problems, name=s.hf_dataset)
    else:
        result = source.read(s.input, options, problems)
    summary = Summary(skipped=list(problems.items), notes=list(result.notes))
    linking = _Linking(result, s)
    try:
        split_examples = assign_splits(result, s, summary.notes)
        if s.check_gold:
            all_examples = [ex for exs in split_examples.values() for ex in exs]
            check_gold(all_examples, result, summary.gold, s.progress)
        records = _records(split_examples, s, renderer, linking, summary)
        # Everything is written beside its final name and renamed at the end, databases
        # included: a failure leaves the previous outputs as they were.
        for split, recs in records.items():
            write_lines(result.staging.path_for(s.out / f"{split}.jsonl"), map(json_line, recs))
        summary.seconds = time.perf_counter() - start
        write_lines(result.staging.path_for(s.out / REPORT_NAME),
                    [json.dumps(summary.to_dict(s), indent=2, ensure_ascii=False)])
        result.staging.commit()
    except BaseException:
        result.staging.rollback()
        raise
    finally:
        linking.close()
    return summary
