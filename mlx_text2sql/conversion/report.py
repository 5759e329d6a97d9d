"""What a conversion did: the summary written to ``convert_report.json`` and printed.

Pure Python: no MLX import.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from ..errors import InputError
from ..splits import SPLITS
from .gold import GoldStats
from .settings import Settings

REPORT_NAME = "convert_report.json"


@dataclass
class Summary:
    """Counts per split, skipped and trimmed examples, the gold check and notes."""

    counts: dict[str, int] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)
    skipped: list[InputError] = field(default_factory=list)
    trimmed: int = 0
    too_long: list[str] = field(default_factory=list)
    gold: GoldStats = field(default_factory=GoldStats)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # split -> [examples selected, examples whose gold tables all survived the selection]
    selection: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self, s: Settings) -> dict:
        return {
            "format": s.format,
            "input": s.input or s.hf_dataset,
            "splits": self.counts,
            "groups": self.groups,
            "skipped": len(self.skipped),
            "skipped_records": [str(e) for e in self.skipped],
            "trimmed": self.trimmed,
            "too_long": len(self.too_long),
            "too_long_ids": self.too_long,
            "gold": {"checked": self.gold.checked, "errors": self.gold.errors,
                     "checked_on_data": self.gold.with_data,
                     "non_empty": self.gold.with_data_nonempty, "empty": self.gold.empty},
            "notes": self.notes,
            "selection_recall": {k: {"examples": n, "gold_tables_kept": ok,
                                     "recall": round(ok / n, 4) if n else None}
                                 for k, (n, ok) in self.selection.items()},
            "settings": {"select_tables": s.select_tables, "max_tables": s.max_tables,
                         "sample_rows": s.sample_rows, "value_hints": s.value_hints,
                         "max_hints": s.max_hints, "max_tokens": s.max_tokens,
                         "record_format": s.record_format, "chat_template": s.chat_template,
                         "model": s.model, "seed": s.seed, "keep_splits": s.keep_splits,
                         "valid_fraction": s.valid_fraction, "test_fraction": s.test_fraction,
                         "valid_size": s.valid_size, "test_size": s.test_size, "limit": s.limit},
        }


def print_summary(s: Settings, summary: Summary, file=None) -> None:
    file = file or sys.stdout
    unit = {"wikisql": "tables", "spider": "databases"}.get(s.format, "schemas")
    print(f"{s.format} -> {s.out}", file=file)
    for split in SPLITS:
        print(f"  {split:<5} {summary.counts.get(split, 0):>8} examples  "
              f"({summary.groups.get(split, 0)} {unit})", file=file)
    n_skip = len(summary.skipped)
    print(f"  skipped {n_skip} bad records", file=file)
    for e in summary.skipped[:20]:
        print(f"    {e}", file=file)
    if n_skip > 20:
        print(f"    ... {n_skip - 20} more in {s.out / REPORT_NAME}", file=file)
    if s.max_tokens is not None:
        print(f"  trimmed {summary.trimmed} schemas to fit {s.max_tokens} tokens; dropped "
              f"{len(summary.too_long)} examples that did not fit even so", file=file)
    for split, (n, ok) in summary.selection.items():
        print(f"  schema selection ({split}): the gold SQL's tables all shown for {ok}/{n} "
              f"({100.0 * ok / max(n, 1):.1f}%) multi-table questions"
              + (" (the gold SQL's tables are added to training prompts)" if split == "train" else ""),
              file=file)
    g = summary.gold
    if g.checked:
        line = f"  gold SQL: {g.checked} executed, {g.errors} failed"
        if g.with_data:
            pct = 100.0 * g.with_data_nonempty / g.with_data
            line += f"; {g.with_data_nonempty}/{g.with_data} ({pct:.2f}%) non-empty on data"
        print(line, file=file)
        for e in g.error_examples[:5]:
            print(f"    {e}", file=file)
    for note in summary.notes:
        print(f"  {note}", file=file)
    print(f"  done in {summary.seconds:.1f} s", file=file)
