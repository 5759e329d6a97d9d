"""Typed errors. Every message names what went wrong, where (file:line when there is one) and
how to fix it; command-line entry points print ``str(error)`` and exit non-zero without a
traceback."""

from __future__ import annotations


class Text2SQLError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = 2


class InputError(Text2SQLError):
    """Bad input data: a malformed record, a missing field, an index out of range.

    ``path`` and ``line`` (1-based) say where, when known.
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.path = path
        self.line = line
        self.reason = message
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


class ConfigError(Text2SQLError):
    """Invalid settings. Carries every problem found, not just the first."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            text = f"invalid setting: {self.problems[0]}"
        else:
            text = "invalid settings:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(text)


class ModelError(Text2SQLError):
    """A model cannot be found, loaded or is of an unsupported kind."""


class AdapterError(Text2SQLError):
    """An adapter folder is missing, corrupt, or does not fit the model it is applied to."""


class SQLExecutionError(Text2SQLError):
    """SQL failed to execute (syntax error, unknown column, refused statement, time limit)."""

    def __init__(self, message: str, sql: str | None = None, kind: str = "error"):
        self.sql = sql
        self.kind = kind  # "syntax", "refused", "timeout", "too_many_rows", "error", "no_database"
        super().__init__(message)


class TrainingError(Text2SQLError):
    """Training had to stop (NaN loss, no data left after filtering, ...)."""


def run_cli(main_fn, argv=None) -> int:
    """Run a command's main, turning our typed errors into one clear line on stderr."""
    import sys

    try:
        result = main_fn(argv)
        return int(result or 0)
    except Text2SQLError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run_model_cli(main_fn, argv=None) -> int:
    """:func:`run_cli` for a command that loads a model: the fast BLAS is loaded first (before
    MLX, on Linux), then ``main_fn`` runs."""
    from .blas import ensure_fast_blas

    ensure_fast_blas(quiet=True)
    return run_cli(main_fn, argv)
