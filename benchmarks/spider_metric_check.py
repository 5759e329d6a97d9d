"""Re-score ``evaluate --output`` predictions with a second, separately written Spider metric.

``evaluate`` scores Spider records with :mod:`mlx_text2sql.scoring` (the read-only executor and
``results_match(..., exact_values=True)``). This script decides the same question without any of
that code: it opens each database with the standard library's ``sqlite3`` (read-only URI, a
progress-handler deadline), runs the gold and the predicted query itself, and compares results
the way Spider's test-suite execution evaluation describes it:

* two empty results are equal; otherwise the row counts and column counts must agree;
* rows are compared as multisets, and in order only when the gold query contains ``ORDER BY``
  anywhere (the official rule is that plain substring test, which also fires on an ORDER BY in
  a subquery);
* columns may come in any order: every permutation of the predicted columns whose column-wise
  value multisets fit the gold's is tried;
* values are compared with Python ``==`` on what ``sqlite3`` returns (so ``1 == 1.0``, and
  ``'1' != 1``), with no case folding.

It prints how often the two metrics agree and lists every record where they do not, with both
queries, so that each disagreement can be read and explained::

    python benchmarks/spider_metric_check.py predictions.jsonl --databases ../shared/datasets/spider/database
"""

from __future__ import annotations

import argparse
import itertools
import json
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path

MAX_PERMUTATIONS = 5040


def run(db: Path, sql: str, timeout_s: float) -> tuple[list[tuple] | None, str | None]:
    """Rows of ``sql`` on ``db`` opened read-only, or ``(None, error)``."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.Error as e:
        return None, f"open: {e}"
    deadline = time.monotonic() + timeout_s
    con.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    con.text_factory = lambda b: b.decode("utf-8", "replace")
    try:
        return [tuple(r) for r in con.execute(sql).fetchall()], None
    except (sqlite3.Error, sqlite3.Warning, OverflowError, ValueError) as e:
        return None, f"{type(e).__name__}: {e}"
    finally:
        con.close()


def _column(rows: list[tuple], j: int) -> Counter:
    return Counter(r[j] for r in rows)


def same_result(gold: list[tuple], pred: list[tuple], order_matters: bool) -> bool:
    """Spider test-suite style equality of two results."""
    if not gold and not pred:
        return True
    if len(gold) != len(pred):
        return False
    width = len(gold[0])
    if any(len(r) != width for r in pred):
        return False
    gold_cols = [_column(gold, j) for j in range(width)]
    pred_cols = [_column(pred, j) for j in range(width)]
    # Candidate predicted columns for each gold column: same multiset of values.
    options = [[k for k in range(width) if pred_cols[k] == gold_cols[j]] for j in range(width)]
    if any(not o for o in options):
        return False
    tried = 0
    for perm in itertools.product(*options):
        if len(set(perm)) != width:
            continue
        tried += 1
        if tried > MAX_PERMUTATIONS:
            break
        moved = [tuple(r[k] for k in perm) for r in pred]
        if order_matters:
            if moved == gold:
                return True
        elif Counter(moved) == Counter(gold):
            return True
    return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", help="JSONL written by evaluate --output (Spider records)")
    parser.add_argument("--databases", required=True, help="folder of <db_id>/<db_id>.sqlite")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per query (default 30)")
    parser.add_argument("--show", type=int, default=20, help="disagreements to print (default 20)")
    args = parser.parse_args(argv)

    base = Path(args.databases)
    records = [json.loads(line) for line in Path(args.predictions).read_text().splitlines() if line.strip()]
    n = agree = ours_true = theirs_true = skipped = 0
    diffs = []
    for rec in records:
        db = base / rec["db_id"] / f"{rec['db_id']}.sqlite"
        if not db.is_file() or rec.get("match") is None:
            skipped += 1
            continue
        gold, gold_err = run(db, rec["gold_sql"], args.timeout)
        if gold is None:
            skipped += 1
            continue
        pred, _ = run(db, rec.get("pred_sql") or "", args.timeout) if rec.get("pred_sql") else (None, "empty")
        theirs = pred is not None and same_result(gold, pred, "order by" in rec["gold_sql"].lower())
        ours = rec["match"] is True
        n += 1
        agree += ours == theirs
        ours_true += ours
        theirs_true += theirs
        if ours != theirs:
            diffs.append((rec, ours, theirs))
    print(f"records: {n} scored, {skipped} skipped (no database file, unscored or failing gold)")
    if n:
        print(f"agreement: {agree}/{n} ({agree / n:.2%})")
        print(f"execution accuracy: evaluate {ours_true / n:.2%}, this check {theirs_true / n:.2%}")
    for rec, ours, theirs in diffs[: args.show]:
        print(f"\n{rec['id']} ({rec['db_id']}): evaluate {ours}, this check {theirs}")
        print(f"  gold: {rec['gold_sql']}")
        print(f"  pred: {rec.get('pred_sql')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
