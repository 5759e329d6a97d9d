"""Reading a dataset's records and reporting the bad ones.

- :class:`Problems` is how converters report a bad record: raised at once (``--strict``) or
  recorded with its file:line and skipped.
- :func:`iter_records` reads JSONL or a JSON array with a line number for each record.
- :func:`require` checks one field of a record and says what is wrong and where.

Pure Python: no MLX import.
"""

from __future__ import annotations

import bisect
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..jsonl import iter_jsonl

# --------------------------------------------------------------------------- problems


@dataclass
class Where:
    """Where a record came from: file (or dataset name) and 1-based line (or record number)."""

    path: str
    line: int | None = None

    def error(self, message: str) -> InputError:
        return InputError(message, self.path, self.line)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.line is not None else self.path


@dataclass
class Problems:
    """Bad records met while converting.

    ``strict``: :meth:`add` raises the error (the conversion stops at the first bad record);
    otherwise the error is kept (with its file:line) and the caller skips the record.
    """

    strict: bool = False
    items: list[InputError] = field(default_factory=list)

    def add(self, error: InputError) -> None:
        if self.strict:
            raise error
        self.items.append(error)

    def __len__(self) -> int:
        return len(self.items)


# --------------------------------------------------------------------------- reading records


def iter_records(path: str | os.PathLike, problems: Problems) -> Iterator[tuple[Where, dict]]:
    """Yield ``(where, record)`` from a JSONL file or a JSON file holding an array of objects.

    A ``.json`` file is read as one array (Spider, the original sql-create-context file);
    anything else as JSONL. Each record gets the line it starts on. A malformed line, or an
    element that is not an object, goes to ``problems``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", str(path))
    if path.suffix.lower() != ".json":
        yield from _jsonl_records(path, problems)
        return
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    newlines = [m.start() for m in re.finditer("\n", text)]

    def line_of(offset: int) -> int:
        return bisect.bisect_left(newlines, offset) + 1

    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    pos = ws.match(text, 0).end()
    if text[pos: pos + 1] != "[":
        # A single JSON object per file, or JSONL saved under a .json name.
        if text[pos: pos + 1] == "{":
            try:
                obj, end = decoder.raw_decode(text, pos)
                if ws.match(text, end).end() == len(text):
                    yield Where(str(path), line_of(pos)), obj
                    return
            except ValueError:
                pass  # read it as JSON lines: the bad line is then reported with its number
            yield from _jsonl_records(path, problems)
            return
        raise InputError("expected a JSON array of records or JSON lines", str(path), line_of(pos))
    pos = ws.match(text, pos + 1).end()
    if text[pos: pos + 1] == "]":
        return
    while True:
        start = pos
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except ValueError as e:
            # Nothing after a syntax error inside an array can be trusted: stop here.
            problems.add(InputError(f"malformed JSON ({e}); the rest of the file is skipped",
                                    str(path), line_of(start)))
            return
        if isinstance(obj, dict):
            yield Where(str(path), line_of(start)), obj
        else:
            problems.add(InputError(f"expected a JSON object, got {type(obj).__name__}",
                                    str(path), line_of(start)))
        pos = ws.match(text, pos).end()
        sep = text[pos: pos + 1]
        if sep == ",":
            pos = ws.match(text, pos + 1).end()
        elif sep == "]":
            return
        else:
            problems.add(InputError("malformed JSON array (expected ',' or ']'); the rest of the "
                                    "file is skipped", str(path), line_of(pos)))
            return


def _jsonl_records(path: Path, problems: Problems) -> Iterator[tuple[Where, dict]]:
    try:
        for lineno, rec in iter_jsonl(path, strict=problems.strict, problems=problems.items):
            yield Where(str(path), lineno), rec
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _not_utf8(path: Path) -> InputError:
    """The error for a file that is not UTF-8, naming the line of its first bad byte."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        return InputError("not UTF-8 text", str(path))
    except UnicodeDecodeError as e:
        return InputError(f"not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as UTF-8",
                          str(path), data.count(b"\n", 0, e.start) + 1)


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", list: "a list",
               dict: "an object", bool: "true/false"}


def describe(value: Any) -> str:
    if value is None:
        return "null"
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def require(rec: Any, name: str, kind: type | tuple[type, ...], where: Where,
            *, nonempty: bool = False) -> Any:
    """``rec[name]``, checked to be of ``kind`` (bool never counts as int or float).

    Raises :class:`InputError` naming the field, what it holds and where.
    """
    if not isinstance(rec, dict):
        raise where.error(f"expected a JSON object, got {describe(rec)}")
    if name not in rec:
        raise where.error(f"missing field {name!r}")
    return check_type(rec[name], name, kind, where, nonempty=nonempty)


def check_type(value: Any, name: str, kind: type | tuple[type, ...], where: Where,
               *, nonempty: bool = False) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        wanted = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise where.error(f"field {name!r} must be {wanted}, got {describe(value)}")
    if nonempty and isinstance(value, str) and not value.strip():
        raise where.error(f"field {name!r} is empty")
    return value


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
