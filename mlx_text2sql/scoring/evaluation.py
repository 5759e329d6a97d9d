"""Scoring one prediction against its record (:func:`evaluate_prediction`), and the totals
over many (:func:`summarize`, :func:`format_summary`).

A record's rules follow its ``source``: Spider records compare values exactly
(:mod:`.compare`), WikiSQL records run both queries with case-insensitive string comparisons
(:func:`~.compare.case_insensitive_sql`); every record also gets an exact-match verdict
(:mod:`.exact`) and, where it can be graded, a Spider hardness (:mod:`.hardness`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable

from ..errors import InputError
from ..sqlexec import try_execute
from .compare import case_insensitive_sql, order_matters, results_match
from .exact import exact_match
from .hardness import HARDNESS_LEVELS, spider_hardness
from .parsing import _parse_one


def _resolve_db(record: dict, base_dir) -> Path | None:
    db = record.get("db_path")
    if not db:
        return None
    path = Path(db)
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path


def _hardness(record: dict) -> str | None:
    meta = record.get("meta") or {}
    if meta.get("hardness") in HARDNESS_LEVELS:
        return meta["hardness"]
    try:
        return spider_hardness(record.get("sql") or "")
    except InputError:
        return None


def evaluate_prediction(record: dict, pred_sql: str, *, base_dir: str | Path | None = None,
                        timeout_s: float = 5.0, max_rows: int = 50_000,
                        case_insensitive: bool | None = None, text_nocase: bool = True,
                        exact_values: bool | None = None, preview_rows: int = 5) -> dict:
    """Score one prediction against one JSONL record (``question, schema, sql, source, id,
    db_path, ...``).

    ``db_path`` is resolved against ``base_dir`` (the JSONL file's folder). Without a database
    file, the query is checked against an empty database built from the record's ``schema``
    (``valid_sql``), and ``match`` is None: there are no rows to compare. ``case_insensitive``
    (default: on for WikiSQL records) runs both queries through :func:`case_insensitive_sql`;
    ``exact_values`` (default: on for Spider records) compares values as Spider's official
    execution evaluation does (see :mod:`.compare`).

    Returns a JSON-ready dict: ``id, source, db_id, hardness, gold_sql, pred_sql, match``
    (bool, or None when the gold cannot run), ``exact_match, valid_sql, ordered, pred_error,
    pred_error_kind, gold_error, gold_rows, pred_rows, pred_elapsed_s``.
    """
    gold_sql = record.get("sql") or ""
    pred_sql = pred_sql or ""
    source = record.get("source") or "unknown"
    if case_insensitive is None:
        case_insensitive = str(source).lower().startswith("wikisql")
    if exact_values is None:
        exact_values = str(source).lower().startswith("spider")
    spider = str(source).lower().startswith("spider")
    db_path = _resolve_db(record, base_dir)
    schema = record.get("schema") if isinstance(record.get("schema"), str) else None
    run_gold = case_insensitive_sql(gold_sql) if case_insensitive else gold_sql
    run_pred = case_insensitive_sql(pred_sql) if case_insensitive else pred_sql
    limits = dict(timeout_s=timeout_s, max_rows=max_rows, double_quoted_strings=True if spider else None)

    out: dict[str, Any] = {
        "id": record.get("id"), "source": source, "db_id": record.get("db_id"),
        "hardness": _hardness(record), "gold_sql": gold_sql, "pred_sql": pred_sql,
        "match": None, "exact_match": exact_match(gold_sql, pred_sql), "valid_sql": False,
        "ordered": order_matters(gold_sql), "pred_error": None, "pred_error_kind": None,
        "gold_error": None, "gold_rows": None, "pred_rows": None, "pred_elapsed_s": None,
    }

    gold = try_execute(db_path, run_gold, **limits) if db_path is not None else None
    if gold is not None and (gold.ok or gold.error.kind != "no_database"):
        pred = try_execute(db_path, run_pred, **limits)
    else:
        out["gold_error"] = (str(gold.error) if gold is not None else
                             "no database file: only the schema is known, rows cannot be compared")
        if schema is None:
            # Nothing to run on: a prediction is "valid" when it parses as one statement.
            out["valid_sql"] = _parse_one(pred_sql) is not None
            if not out["valid_sql"]:
                out["pred_error"] = "does not parse as one SQL statement"
                out["pred_error_kind"] = "syntax"
            return out
        # Check the prediction compiles and runs against the schema (an empty database).
        pred = try_execute(None, run_pred, schema_sql=schema, **limits)
        gold = None

    if pred.ok:
        out["valid_sql"] = True
        out["pred_rows"] = pred.result.preview(preview_rows)
        out["pred_elapsed_s"] = round(pred.result.elapsed_s, 6)
    else:
        out["pred_error"], out["pred_error_kind"] = str(pred.error), pred.error.kind
    if gold is None:
        return out
    if not gold.ok:
        out["gold_error"] = str(gold.error)
        return out
    out["gold_rows"] = gold.result.preview(preview_rows)
    out["match"] = pred.ok and results_match(gold.result.rows, pred.result.rows,
                                             ordered=out["ordered"], text_nocase=text_nocase,
                                             exact_values=exact_values)
    return out


# =========================================================================== summary

def _stats(results: list[dict]) -> dict:
    n = len(results)
    scored = [r for r in results if r.get("match") is not None]
    return {
        "n": n,
        "n_scored": len(scored),
        "execution_accuracy": (sum(bool(r["match"]) for r in scored) / len(scored))
        if scored else None,
        "exact_match": sum(bool(r.get("exact_match")) for r in results) / n if n else None,
        "valid_sql_rate": sum(bool(r.get("valid_sql")) for r in results) / n if n else None,
        "n_gold_errors": sum(r.get("gold_error") is not None for r in results),
    }


def summarize(results: Iterable[dict]) -> dict:
    """Totals over :func:`evaluate_prediction` results, overall and by ``source`` and by
    ``hardness``. ``execution_accuracy`` is over the examples whose gold SQL ran
    (``n_scored``); exact match and valid-SQL rate are over all ``n``."""
    results = list(results)
    summary = _stats(results)
    summary["pred_error_kinds"] = dict(Counter(r["pred_error_kind"] for r in results
                                               if r.get("pred_error_kind")))
    by_source: dict[str, list] = defaultdict(list)
    by_hardness: dict[str, list] = defaultdict(list)
    for r in results:
        by_source[str(r.get("source") or "unknown")].append(r)
        by_hardness[r.get("hardness") or "unknown"].append(r)
    summary["by_source"] = {k: _stats(v) for k, v in sorted(by_source.items())}
    order = {h: i for i, h in enumerate(HARDNESS_LEVELS)}
    summary["by_hardness"] = {k: _stats(by_hardness[k])
                              for k in sorted(by_hardness, key=lambda h: (order.get(h, 99), h))}
    return summary


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def format_summary(summary: dict) -> str:
    """:func:`summarize`'s result as an aligned text table, one line per group."""
    rows = [("all", summary)]
    if len(summary.get("by_source", {})) > 1:
        rows += [(f"source={k}", v) for k, v in summary["by_source"].items()]
    elif summary.get("by_source"):
        rows[0] = (f"all ({next(iter(summary['by_source']))})", summary)
    hard = summary.get("by_hardness", {})
    if set(hard) - {"unknown"}:
        rows += [(f"hardness={k}", v) for k, v in hard.items()]
    header = ("group", "n", "scored", "exec acc", "exact", "valid SQL", "gold err")
    table = [header] + [(name, str(s["n"]), str(s["n_scored"]), _pct(s["execution_accuracy"]),
                         _pct(s["exact_match"]), _pct(s["valid_sql_rate"]),
                         str(s["n_gold_errors"])) for name, s in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))) for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    kinds = summary.get("pred_error_kinds") or {}
    if kinds:
        lines.append("prediction errors: " + ", ".join(f"{k} {v}" for k, v in
                                                       sorted(kinds.items(), key=lambda x: -x[1])))
    return "\n".join(lines)
