"""Scoring predicted SQL, kept at this import path: it lives in :mod:`mlx_text2sql.scoring`
(result comparison, exact match, Spider hardness, evaluation and summary; the rules are in
each module's docstring)."""

from .scoring import (ABS_TOL, DIALECT, HARDNESS_LEVELS, MAX_PERMUTATIONS, REL_TOL,
                      case_insensitive_sql, evaluate_prediction, exact_match, format_summary,
                      normalize_sql, order_matters, results_match, spider_hardness, summarize)
from .scoring.evaluation import _hardness, _resolve_db
from .scoring.parsing import _parse_one

__all__ = [
    "results_match", "order_matters", "normalize_sql", "exact_match", "case_insensitive_sql",
    "spider_hardness", "evaluate_prediction", "summarize", "format_summary", "HARDNESS_LEVELS",
]
