"""Pieces every dataset converter shares.

- :class:`Problems` is how converters report a bad record: raised at once (``--strict``) or
  recorded with its file:line and skipped.
- :func:`iter_records` reads JSONL or a JSON array with a line number for each record.
- :func:`require` checks one field of a record and says what is wrong and where.
- :func:`parse_schema_text` turns CREATE TABLE statements (NSQL, sql-create-context) into
  :class:`~mlx_text2sql.example.Table` objects with sqlglot, so every source's schema renders
  the same way; a statement sqlglot cannot read is kept verbatim in ``Table.create_sql``.
- :class:`Staging` writes SQLite files beside their final path and renames them only when the
  whole conversion succeeded.

Pure Python: no MLX import.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import logging
import os
import re
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..example import Column, Example, Table
from ..jsonl import iter_jsonl
from ..sql.ddl import create_table_name
from ..sql.lexer import mask

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


# --------------------------------------------------------------------------- CREATE TABLE text

_CREATE_RE = re.compile(r"\bCREATE\s+(?:TEMP\s+|TEMPORARY\s+)?TABLE\b", re.I)
_STATEMENT_END = re.compile(r"[();]")
_TABLE_OPTIONS = re.compile(r"[ \t]*(WITHOUT\s+ROWID|STRICT)?", re.I)


def split_create_statements(text: str) -> list[str]:
    """The CREATE TABLE statements in ``text``, each up to its closing parenthesis.

    Statements may be separated by ';', blank lines or nothing (sql-create-context joins them
    with '; ', NSQL with blank lines); comments and quoted names are skipped correctly.
    """
    # Searched in the masked text (comments, strings and quoted names blanked, positions kept),
    # cut from the original.
    code = mask(text)
    out = []
    i, n = 0, len(text)
    while (m := _CREATE_RE.search(code, i)) is not None:
        start, j, depth = m.start(), n, 0
        for p in _STATEMENT_END.finditer(code, m.end()):
            ch = p.group()
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    j = p.end()
                    break
            elif depth == 0:  # ';' outside the column list
                j = p.start()
                break
        # Table options after ')' (WITHOUT ROWID, STRICT) run to the end of the line.
        j = _TABLE_OPTIONS.match(text, j).end()
        out.append(text[start:j].strip())
        i = j
    return out


def _table_name_guess(stmt: str) -> str:
    name = create_table_name(stmt)
    return "?" if name is None else name


@contextlib.contextmanager
def quiet_sqlglot():
    """Silence sqlglot's "falling back to parsing as a Command" warnings: a statement it
    cannot read is handled (kept verbatim) by the caller."""
    logger = logging.getLogger("sqlglot")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def parse_create_table(stmt: str) -> Table:
    """One CREATE TABLE statement as a :class:`Table` (columns, types, primary/foreign keys).

    Types are sqlglot's spelling of the declared type (``INTEGER`` reads as ``INT``); a
    statement sqlglot cannot parse, or one with no column list (``CREATE TABLE x AS SELECT``),
    or one with table options (``WITHOUT ROWID``, ``STRICT``) comes back with its name guessed
    and the text kept in ``create_sql``.
    """
    import sqlglot
    from sqlglot import expressions as exp

    try:
        with quiet_sqlglot():
            tree = sqlglot.parse_one(stmt, read="sqlite")
        schema = tree.this if isinstance(tree, exp.Create) else None
        if not isinstance(schema, exp.Schema) or not isinstance(schema.this, exp.Table):
            raise ValueError("no column list")
        if tree.args.get("properties") is not None:
            # table options (WITHOUT ROWID, STRICT, ...) a rendering from columns would lose
            raise ValueError("table options")
        table = Table(name=schema.this.name)
        for item in schema.expressions:
            if isinstance(item, exp.ColumnDef):
                kind = item.args.get("kind")
                table.columns.append(Column(item.name, kind.sql() if kind is not None else ""))
                for cons in item.args.get("constraints") or []:
                    ckind = cons.args.get("kind")
                    if isinstance(ckind, exp.PrimaryKeyColumnConstraint):
                        table.primary_key.append(item.name)
                    elif isinstance(ckind, exp.Reference):
                        ref_table, ref_cols = _reference(ckind)
                        if ref_table:
                            table.foreign_keys.append((item.name, ref_table, ref_cols[0] if ref_cols else item.name))
            elif isinstance(item, exp.PrimaryKey):
                table.primary_key.extend(_ident_name(e) for e in item.expressions)
            elif isinstance(item, exp.ForeignKey):
                ref = item.args.get("reference")
                ref_table, ref_cols = _reference(ref) if ref is not None else (None, [])
                cols = [_ident_name(e) for e in item.expressions]
                if ref_table:
                    for k, col in enumerate(cols):
                        table.foreign_keys.append((col, ref_table, ref_cols[k] if k < len(ref_cols) else col))
        if not table.columns:
            raise ValueError("no columns")
        return table
    except Exception:  # noqa: BLE001 - sqlglot raises many kinds; the statement is kept verbatim
        return Table(name=_table_name_guess(stmt), create_sql=stmt.strip().rstrip(";"))


def _ident_name(node) -> str:
    return node.name if hasattr(node, "name") and node.name else node.sql()


def _reference(ref) -> tuple[str | None, list[str]]:
    from sqlglot import expressions as exp

    target = ref.this
    if isinstance(target, exp.Schema):
        return target.this.name, [_ident_name(e) for e in target.expressions]
    if isinstance(target, exp.Table):
        return target.name, []
    return None, []


def parse_schema_text(text: str) -> list[Table]:
    """Every CREATE TABLE statement in ``text`` as a :class:`Table`, in order, repaired by
    :func:`merge_tables` so that SQLite accepts the schema."""
    return merge_tables([parse_create_table(s) for s in split_create_statements(text)])[0]


def merge_tables(tables: list[Table]) -> tuple[list[Table], bool]:
    """One table per name, one column per name (SQLite compares names case-insensitively).

    sql-create-context sometimes declares a table twice with different columns
    (``CREATE TABLE artist (artist_name ...); ... CREATE TABLE artist (artist_name, country)``)
    or a column twice (``Price``, ``price``): no database can hold that schema, so the columns
    are united in first-seen order. A table kept verbatim (``create_sql``) is not merged; a
    later duplicate of it is dropped. Returns the tables and whether anything changed.
    """
    merged: dict[str, Table] = {}
    changed = False
    for t in tables:
        key = t.name.lower()
        if t.create_sql:
            if key in merged:
                changed = True
            else:
                merged[key] = t
            continue
        target = merged.get(key)
        if target is None:
            target = merged[key] = Table(name=t.name)
        else:
            changed = True
            if target.create_sql:
                continue
        have = {c.name.lower() for c in target.columns}
        for c in t.columns:
            if c.name.lower() in have:
                changed = True
                continue
            have.add(c.name.lower())
            target.columns.append(Column(c.name, c.type))
        for pk in t.primary_key:
            if pk.lower() not in {p.lower() for p in target.primary_key}:
                target.primary_key.append(pk)
        for fk in t.foreign_keys:
            if fk not in target.foreign_keys:
                target.foreign_keys.append(fk)
    return list(merged.values()), changed


def schema_ddl(tables: Iterable[Table]) -> list[str]:
    """CREATE TABLE statements that build ``tables`` in SQLite (quoted names, keys kept)."""
    from ..prompts import render_table

    return [render_table(t, sample_rows=0).rstrip(";") for t in tables]


def schema_key(tables: Iterable[Table]) -> str:
    """A short stable id of a schema's structure (names, types, keys; not sample rows)."""
    h = hashlib.sha1()
    for stmt in schema_ddl(tables):
        h.update(stmt.encode("utf-8") + b"\0")
    return "s" + h.hexdigest()[:12]


# --------------------------------------------------------------------------- SQLite

def connect_readonly(path: str | os.PathLike) -> sqlite3.Connection:
    """Open a SQLite file read-only (works on read-only file systems); cells that are not
    valid UTF-8 (a few Spider databases hold some) decode with replacement characters."""
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    conn.text_factory = lambda b: b.decode("utf-8", errors="replace")
    return conn


def is_sqlite_database(path: str | os.PathLike) -> bool:
    """True when ``path`` is a readable SQLite file holding at least one table."""
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        return False
    try:
        conn = connect_readonly(p)
        try:
            return conn.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0] > 0
        finally:
            conn.close()
    except sqlite3.Error:
        return False


def tables_from_database(path: str | os.PathLike, sample_rows: int = 3,
                         names: Iterable[str] | None = None) -> list[Table]:
    """The tables of a SQLite file as :class:`Table` objects (declared types, primary and
    foreign keys, ``sample_rows`` rows each), in creation order, SQLite's own tables left out.

    Rendered with :func:`mlx_text2sql.prompts.render_schema`, a database written by the WikiSQL
    converter gives exactly the schema text of its training records, so a model is asked
    about a live database (``generate --db``) in the form it was trained on. ``names``
    restricts the result to those tables (matched case-insensitively).
    """
    wanted = {n.lower() for n in names} if names is not None else None
    conn = connect_readonly(path)
    try:
        out = []
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                    "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY rowid"):
            if wanted is not None and name.lower() not in wanted:
                continue
            q = quote_name(name)
            info = conn.execute(f"PRAGMA table_info({q})").fetchall()
            table = Table(name=name, columns=[Column(c[1], (c[2] or "").upper()) for c in info])
            table.primary_key = [c[1] for c in sorted(info, key=lambda c: c[5]) if c[5] > 0]
            # (id, seq, table, from, to, ...); 'to' is NULL when it names the primary key. SQLite
            # numbers a table's foreign keys last-declared first: listed here in declaration
            # order, as the CREATE TABLE (and Spider's tables.json) give them.
            fks = conn.execute(f"PRAGMA foreign_key_list({q})").fetchall()
            for fk in sorted(fks, key=lambda r: (-r[0], r[1])):
                table.foreign_keys.append((fk[3], fk[2], fk[4] or fk[3]))
            if sample_rows > 0 and table.columns:
                cols = ", ".join(quote_name(c.name) for c in table.columns)
                table.rows = [list(r) for r in
                              conn.execute(f"SELECT {cols} FROM {q} LIMIT {int(sample_rows)}")]
            out.append(table)
        return out
    finally:
        conn.close()


def quote_name(name: str) -> str:
    from ..prompts import quote_ident

    return quote_ident(name)


def create_empty_database(path: str | os.PathLike, tables: list[Table]) -> str | None:
    """Create a SQLite file holding ``tables`` with no rows (NSQL, sql-create-context).

    Returns None on success, else the SQLite error text (the file is then removed): a schema
    that SQLite rejects still yields examples, just without a database.
    """
    path = Path(path)
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        for t in tables:
            ddl = t.create_sql if t.create_sql else schema_ddl([t])[0]
            conn.execute(ddl)
        conn.commit()
        return None
    except sqlite3.Error as e:
        conn.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return str(e)
    finally:
        conn.close()


def tables_in_sql(sql: str, tables: Iterable[Table]) -> set[str]:
    """Names of the ``tables`` a query mentions (case-insensitive).

    Reads table references with sqlglot; when it cannot parse the query, falls back to
    looking for each name as a whole word, which can only over-count (keep too much schema).
    """
    names = {t.name.lower(): t.name for t in tables}
    try:
        import sqlglot
        from sqlglot import expressions as exp

        found = set()
        with quiet_sqlglot():
            trees = sqlglot.parse(sql, read="sqlite")
        for tree in trees:
            if tree is None:
                continue
            for node in tree.find_all(exp.Table):
                if node.name.lower() in names:
                    found.add(names[node.name.lower()])
        if found:
            return found
    except Exception:  # noqa: BLE001 - any parse failure falls back to the word search
        pass
    low = sql.lower()
    return {orig for key, orig in names.items()
            if re.search(r"(?<![\w])" + re.escape(key) + r"(?![\w])", low)}


def relative_db_path(db_path: str | None, out_dir: str | os.PathLike) -> str | None:
    """``db_path`` relative to the JSONL folder (POSIX separators), as records store it."""
    if db_path is None:
        return None
    try:
        rel = os.path.relpath(os.path.abspath(db_path), os.path.abspath(out_dir))
    except ValueError:  # another drive on Windows
        return os.path.abspath(db_path)
    return Path(rel).as_posix()


@dataclass
class SourceResult:
    """What a converter hands to ``convert``: examples per official split name
    (``"all"`` when the input has no split structure) and the databases it staged."""

    splits: dict[str, list[Example]]
    staging: Staging = field(default_factory=Staging)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- schema-only sources

class SchemaOnlyBuilder:
    """Examples whose schema is CREATE TABLE text and whose data we do not have (NSQL,
    sql-create-context): parses each distinct schema once, and (``build_db``) creates one
    empty SQLite database per distinct schema under ``out_dir/databases/<key>.sqlite`` so the
    gold SQL can at least be checked to run. Records say ``meta["has_rows"] = False``."""

    def __init__(self, source: str, out_dir: str, build_db: bool, staging: Staging):
        self.source = source
        self.out_dir = Path(out_dir)
        self.build_db = build_db
        self.staging = staging
        self._schemas: dict[str, tuple[list[Table], str]] = {}  # schema text -> (tables, key)
        self._db: dict[str, tuple[str | None, str | None]] = {}  # key -> (final path, error)
        self.built = 0
        self.reused = 0
        self.failed = 0

    def tables(self, schema_text: str, where: Where) -> tuple[list[Table], str]:
        cached = self._schemas.get(schema_text)
        if cached is None:
            tables = parse_schema_text(schema_text)
            if not tables:
                raise where.error("no CREATE TABLE statement in the schema text")
            cached = self._schemas[schema_text] = (tables, schema_key(tables))
        return cached

    def database(self, key: str, tables: list[Table]) -> tuple[str | None, str | None]:
        """(absolute final path or None, SQLite error or None) of the empty database."""
        if not self.build_db:
            return None, None
        if key not in self._db:
            final = (self.out_dir / "databases" / f"{key}.sqlite").resolve()
            # Named by a hash of its DDL: an existing valid file already holds this schema.
            if is_sqlite_database(final):
                self.reused += 1
                self._db[key] = (str(final), None)
            else:
                error = create_empty_database(self.staging.path_for(final), tables)
                if error is None:
                    self.built += 1
                    self._db[key] = (str(final), None)
                else:
                    self.failed += 1
                    self.staging.discard(final)
                    self._db[key] = (None, error)
        return self._db[key]

    def example(self, *, question: str, sql: str, schema_text: str, where: Where, ex_id: str,
                db_id: str | None = None, meta: dict | None = None) -> Example:
        tables, key = self.tables(schema_text, where)
        db_path, error = self.database(key, tables)
        meta = dict(meta or {})
        meta["has_rows"] = False
        meta["schema_key"] = key
        if any(t.create_sql for t in tables):
            meta["unparsed_tables"] = [t.name for t in tables if t.create_sql]
        if error:
            meta["db_error"] = error
        return Example(
            question=" ".join(question.split()),
            sql=sql.strip(),
            tables=tables,
            source=self.source,
            db_path=db_path,
            db_id=db_id or key,
            id=ex_id,
            group=db_id or key,
            meta=meta,
        )

    def notes(self) -> list[str]:
        if not self.build_db:
            return ["no databases built (--no-build-db)"]
        out = [f"empty SQLite databases per schema: {self.built} built, {self.reused} reused "
               f"(in {self.out_dir / 'databases'})"]
        if self.failed:
            out.append(f"{self.failed} schemas SQLite rejected: their examples have no database")
        return out
