"""Sources that give each schema as CREATE TABLE text and no data (NSQL, sql-create-context).

Pure Python: no MLX import.
"""

from __future__ import annotations

from pathlib import Path

from ..example import Example, Table
from .databases import create_empty_database, is_sqlite_database
from .reading import Where
from .schema_text import parse_schema_text, schema_key
from .staging import Staging

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
