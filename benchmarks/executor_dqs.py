"""Valid-SQL and execution figures of deliberately wrong double-quoted queries.

For the first N records of a converted JSONL file, scores three predictions per record with
:func:`mlx_text2sql.metrics.evaluate_prediction`: the gold query; the gold query with its first
selected column replaced by a double-quoted name that is no column of the table (the mistake a
model makes when it writes ``SELECT "Club Team" FROM ...`` for a table without that column);
and the gold query with its single-quoted literals written in double quotes (Spider's habit).
Prints the valid-SQL rate and execution accuracy of each, so that the executor in the checkout
on ``sys.path`` can be compared with another one (run it once from each checkout).

    PYTHONPATH=. python benchmarks/executor_dqs.py /tmp/wsql/test.jsonl --limit 1000
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def _wrong_column(sql: str) -> str | None:
    m = re.match(r'(SELECT\s+(?:(?:COUNT|MAX|MIN|SUM|AVG)\()?)"([^"]+)"', sql, re.I)
    if not m:
        return None
    return sql[:m.start(2) - 1] + '"No Such Column"' + sql[m.end(2) + 1:]


def _double_quoted_values(sql: str) -> str | None:
    out, n = re.subn(r"'((?:[^']|'')*)'", lambda m: '"' + m.group(1).replace("''", "'")
                     .replace('"', '""') + '"', sql)
    return out if n else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="converted JSONL file (records with db_path)")
    parser.add_argument("--limit", type=int, default=1000, help="first N records (default 1000)")
    args = parser.parse_args(argv)

    import mlx_text2sql
    from mlx_text2sql.metrics import evaluate_prediction

    print(f"executor: {Path(mlx_text2sql.__file__).parent}")

    path = Path(args.data)
    records = [json.loads(line) for line in path.read_text().splitlines()[: args.limit]]
    kinds = {"gold": lambda s: s, "wrong double-quoted column": _wrong_column,
             "double-quoted values": _double_quoted_values}
    for name, make in kinds.items():
        n = valid = match = 0
        for rec in records:
            pred = make(rec["sql"])
            if pred is None:
                continue
            r = evaluate_prediction(rec, pred, base_dir=path.parent)
            n += 1
            valid += bool(r["valid_sql"])
            match += r["match"] is True
        print(f"{name:28s} n={n:5d}  valid SQL {100 * valid / max(n, 1):5.1f}%  "
              f"execution accuracy {100 * match / max(n, 1):5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
