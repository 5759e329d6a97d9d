"""What a converter hands back: its examples per split and the files it staged.

:class:`Staging` writes files (SQLite databases, the JSONL records) beside their final path and
renames them only when the whole conversion succeeded.

Pure Python: no MLX import.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..example import Example


class Staging:
    """Files written under a temporary name and renamed over their final path only at
    :meth:`commit`, so a conversion that fails leaves earlier outputs untouched."""

    def __init__(self) -> None:
        self._pending: dict[Path, Path] = {}  # final path -> temp path

    def path_for(self, final: str | os.PathLike) -> Path:
        """A fresh temp path in the folder of ``final`` (created), registered for commit."""
        final = Path(final).resolve()
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        os.unlink(tmp)  # sqlite3 creates it; an empty file would not be a database
        self._pending[final] = Path(tmp)
        return Path(tmp)

    def current(self, final: str | os.PathLike) -> Path:
        """The path holding ``final``'s new content until commit (``final`` itself if none)."""
        return self._pending.get(Path(final).resolve(), Path(final))

    def discard(self, final: str | os.PathLike) -> None:
        """Forget ``final``: its temp file is removed and nothing replaces it."""
        tmp = self._pending.pop(Path(final).resolve(), None)
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def commit(self) -> None:
        for final, tmp in self._pending.items():
            os.replace(tmp, final)
        self._pending.clear()

    def rollback(self) -> None:
        for tmp in self._pending.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._pending.clear()


@dataclass
class SourceResult:
    """What a converter hands to ``convert``: examples per official split name
    (``"all"`` when the input has no split structure) and the databases it staged."""

    splits: dict[str, list[Example]]
    staging: Staging = field(default_factory=Staging)
    notes: list[str] = field(default_factory=list)
