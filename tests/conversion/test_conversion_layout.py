"""The conversion library's layout: old import paths still give the same objects, the
command imports no other command, and converting loads no MLX."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
PACKAGE = ROOT / "mlx_text2sql"
COMMANDS = ["convert", "train", "fuse", "export", "generate", "evaluate", "serve"]

# Every public name each module defined before it was split, and where it lives now.
MOVED = {
    "mlx_text2sql.convert": ("mlx_text2sql.conversion", [
        "ANSWER_RESERVE", "CHARS_PER_TOKEN", "DEFAULT_SPLIT_MAP", "Fitted", "GOLD_TIME_LIMIT_S",
        "GoldStats", "REPORT_NAME", "Renderer", "Settings", "Summary", "assign_splits",
        "check_gold", "convert", "fit_schema", "json_line", "load_hf_splits", "load_tokenizer",
        "make_record", "print_summary"]),
    "mlx_text2sql.sources.common": ("mlx_text2sql.sources.{}", {
        "reading": ["Problems", "Where", "check_type", "describe", "is_number", "iter_records",
                    "require"],
        "staging": ["SourceResult", "Staging"],
        "schema_text": ["merge_tables", "parse_create_table", "parse_schema_text", "quiet_sqlglot",
                        "schema_ddl", "schema_key", "split_create_statements"],
        "databases": ["connect_readonly", "create_empty_database", "is_sqlite_database",
                      "quote_name", "relative_db_path", "tables_from_database", "tables_in_sql"],
        "schema_only": ["SchemaOnlyBuilder"]}),
    "mlx_text2sql.sources.wikisql": ("mlx_text2sql.sources.wikisql.{}", {
        "tables": ["COLUMN_TYPES", "WikiTable", "column_names", "parse_table", "table_sql_name"],
        "logical_form": ["AGG_OPS", "COND_OPS", "condition_literal", "logical_form_to_sql",
                         "normalize_logical_form", "number_literal", "official_number",
                         "stored_value", "string_literal"],
        "database": ["build_database", "create_table_sql", "database_is_current",
                     "tables_fingerprint"],
        "reader": ["_Reader", "find_split_files", "read", "read_hf"]}),
}


def _cases():
    for old, (new, names) in MOVED.items():
        groups = names if isinstance(names, dict) else {"": names}
        for module, group in groups.items():
            for name in group:
                yield old, new.format(module), name


@pytest.mark.parametrize("old,new,name", list(_cases()))
def test_old_import_path_gives_the_same_object(old, new, name):
    assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)


def test_command_keeps_its_own_names():
    from mlx_text2sql import convert

    assert callable(convert.build_parser) and callable(convert.settings_from_args)
    assert callable(convert.main) and callable(convert._main) and "examples:" in convert.EXAMPLES


def test_wikisql_package_is_the_wikisql_source():
    from mlx_text2sql.sources import get_source, wikisql

    assert get_source("wikisql") is wikisql and wikisql.read.__module__.endswith("wikisql.reader")


def _imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of the modules ``path`` (in ``package``) imports."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def test_convert_and_its_library_import_no_command():
    files = [(PACKAGE / "convert.py", "mlx_text2sql")]
    files += [(p, "mlx_text2sql.conversion") for p in (PACKAGE / "conversion").glob("*.py")]
    files += [(p, "mlx_text2sql.sources") for p in (PACKAGE / "sources").glob("*.py")]
    files += [(p, "mlx_text2sql.sources.wikisql") for p in (PACKAGE / "sources" / "wikisql").glob("*.py")]
    for path, package in files:
        own = "mlx_text2sql.convert" if path.name == "convert.py" else None
        commands = {f"mlx_text2sql.{c}" for c in COMMANDS} - {own}
        assert not _imported_modules(path, package) & commands, path


def test_converting_imports_no_mlx():
    code = ("import sys; import mlx_text2sql.convert, mlx_text2sql.conversion, "
            "mlx_text2sql.sources.common, mlx_text2sql.sources.wikisql, mlx_text2sql.sources.spider, "
            "mlx_text2sql.sources.nsql; "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm')], 'mlx imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
