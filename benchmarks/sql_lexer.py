"""Time the code that reads SQL text: statement checks, reply extraction, schema splitting, schema trimming.

    PYTHONPATH=. python benchmarks/sql_lexer.py                           # this checkout
    PYTHONPATH=/path/to/other/checkout python benchmarks/sql_lexer.py   # another version, same inputs

Prints microseconds of CPU time per call (best of --repeat runs; CPU time of this process, so that
other work on a shared machine counts less) for each function on fixed inputs: a Spider-style query,
a model reply with prose around the SQL, and a schema of 8 tables with 3 sample rows each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import timeit

QUERY = ("SELECT T1.name, count(*) FROM \"singer\" AS T1 JOIN concert AS T2 ON T1.id = T2.sid "
         "WHERE T2.year > 2014 AND T1.country = 'France' GROUP BY T1.name ORDER BY count(*) DESC LIMIT 3")
REPLY = f"Here is the query:\n```sql\n{QUERY};\n```\nIt counts the concerts of each French singer."


def schema_text() -> str:
    from mlx_text2sql.example import Column, Table
    from mlx_text2sql.prompts import render_schema

    tables = [Table(name=f"table_{i}", columns=[Column(f"column_{j}", "text") for j in range(8)],
                    rows=[[f"O'Neil {i} {j} {k}" for j in range(8)] for k in range(3)]) for i in range(8)]
    return render_schema(tables, 3)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--number", type=int, default=500, help="calls per timing run (default 500)")
    p.add_argument("--repeat", type=int, default=5, help="timing runs; the best is reported (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    args = p.parse_args(argv)

    from mlx_text2sql.prompts import extract_sql
    from mlx_text2sql.sources.common import split_create_statements
    from mlx_text2sql.sqlexec import check_statement, split_statements
    from mlx_text2sql.tuner.data import trimmed_schemas

    schema = schema_text()
    cases = {
        "sqlexec.check_statement(query)": lambda: check_statement(QUERY),
        "sqlexec.split_statements(query)": lambda: split_statements(QUERY),
        "prompts.extract_sql(reply)": lambda: extract_sql(REPLY),
        f"split_create_statements(schema, {len(schema)} chars)": lambda: split_create_statements(schema),
        "tuner.data.trimmed_schemas(schema, query)": lambda: trimmed_schemas(schema, QUERY),
    }
    out = {}
    for name, fn in cases.items():
        best = min(timeit.repeat(fn, number=args.number, repeat=args.repeat, timer=time.process_time))
        out[name] = round(best / args.number * 1e6, 1)
    if args.json:
        print(json.dumps(out))
    else:
        for name, us in out.items():
            print(f"{us:10.1f} us  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
