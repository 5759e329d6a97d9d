"""Atomic output folders: write into a temporary folder beside the target, rename at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import ConfigError


def target_problems(out: Path, force: bool) -> list[str]:
    """Why ``out`` cannot receive an export (empty list when it can)."""
    if out.exists() and not out.is_dir():
        return [f"--out {out} is a file; give a folder path"]
    if out.is_dir() and any(out.iterdir()) and not force:
        return [f"--out {out} exists and is not empty; pass --force to replace it, or choose another --out"]
    return []


def _umask_mode(mode: int = 0o777) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``out``; on success it becomes ``out``.

    With ``force`` an existing ``out`` is replaced (it is moved aside first and removed only
    after the new folder is in place). On an exception the temporary folder is removed and
    ``out`` is left as it was.
    """
    out = Path(out)
    problems = target_problems(out, force)
    if problems:
        raise ConfigError(problems)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, _umask_mode())  # mkdtemp makes 0700 folders
        old = None
        if out.exists():
            if any(out.iterdir()):
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
                os.replace(out, old / out.name)
            else:
                out.rmdir()
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
