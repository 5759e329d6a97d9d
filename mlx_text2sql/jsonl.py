"""JSONL reading with file:line errors, and atomic writes (temp file + rename)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError


def iter_jsonl(path: str | os.PathLike, *, strict: bool = True, problems: list | None = None
               ) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` for each non-blank line of a JSONL file.

    A line that is not a JSON object raises :class:`InputError` naming file and line when
    ``strict``; otherwise the error is appended to ``problems`` and the line skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", str(path))
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line.rstrip("\r\n"))
                if not isinstance(rec, dict):
                    raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
            except ValueError as e:
                err = InputError(f"malformed JSON line ({e})", str(path), lineno)
                if strict:
                    raise err from None
                if problems is not None:
                    problems.append(err)
                continue
            yield lineno, rec


def read_jsonl(path, **kw) -> list[dict]:
    return [rec for _, rec in iter_jsonl(path, **kw)]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temp file beside ``path``; on success fsync and rename it over ``path``.

    On an exception the temp file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        replace_with_plain_mode(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_jsonl(path, records) -> int:
    """Atomically write records as JSONL; returns the number written."""
    n = 0
    with atomic_open(path) as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path, obj, indent: int = 2) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


def replace_with_plain_mode(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move the finished temporary file ``tmp`` over ``path`` (atomically), giving it the mode a
    plain ``open()`` would (mkstemp creates 0600 files)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
