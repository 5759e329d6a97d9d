"""Scoring predicted SQL: execution match, exact match, Spider hardness, and their summary.

``evaluate`` (and the training's execution-accuracy metric) call :func:`evaluate_prediction`
once per ``(record, predicted SQL)`` and :func:`summarize` / :func:`format_summary` at the
end. Pure Python (sqlglot and the read-only executor :mod:`mlx_text2sql.sqlexec`); no MLX.

- :mod:`.compare`: when two results match (:func:`results_match`): rows as multisets, order
  only under a top-level ORDER BY, columns in any order; numbers with a tolerance, numeric
  text equal to its number and text case-folded (WikiSQL's lenient rules), or every value
  exact (``exact_values``: Spider's official execution evaluation). WikiSQL queries also run
  with case-insensitive string comparisons (:func:`case_insensitive_sql`).
- :mod:`.exact`: exact match of the normalised query texts (:func:`normalize_sql`).
- :mod:`.hardness`: Spider's easy / medium / hard / extra buckets (:func:`spider_hardness`).
- :mod:`.evaluation`: one record's verdict, which rules apply by its ``source``, and totals.
- :mod:`.parsing`: SQL text to one sqlglot tree, as every rule reads it.

Each module's docstring states its rules in full.
"""

from .compare import (ABS_TOL, MAX_PERMUTATIONS, REL_TOL, case_insensitive_sql, order_matters,
                      results_match)
from .evaluation import evaluate_prediction, format_summary, summarize
from .exact import exact_match, normalize_sql
from .hardness import HARDNESS_LEVELS, spider_hardness
from .parsing import DIALECT

__all__ = [
    "results_match", "order_matters", "normalize_sql", "exact_match", "case_insensitive_sql",
    "spider_hardness", "evaluate_prediction", "summarize", "format_summary", "HARDNESS_LEVELS",
]
