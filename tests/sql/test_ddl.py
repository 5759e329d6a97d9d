"""CREATE TABLE names read with the lexer, one case a line; and the sql/ and training/settings
modules stay free of MLX."""

import subprocess
import sys

import pytest

from mlx_text2sql.sql.ddl import create_table_name


@pytest.mark.parametrize("stmt, name", [
    ("CREATE TABLE t (a INT)", "t"),
    ("create table T(a)", "T"),
    ('CREATE TABLE "a ""b"" c" (x)', 'a "b" c'),
    ("CREATE TABLE `my``t` (x)", "my`t"),
    ("CREATE TABLE [my t] (x)", "my t"),
    ("CREATE TEMP TABLE IF NOT EXISTS x (a)", "x"),
    ("CREATE TEMPORARY TABLE y(a)", "y"),
    ("CREATE TABLE main.t (a)", "main.t"),
    ("/* CREATE TABLE no (a) */ CREATE TABLE yes (a)", "yes"),
    ("-- CREATE TABLE no (a)\nCREATE TABLE yes (a)", "yes"),
    ("SELECT 'CREATE TABLE no (a)'", None),
    ("CREATE INDEX i ON t (a)", None),
    ("", None),
])
def test_create_table_name(stmt, name):
    assert create_table_name(stmt) == name


def test_pure_python_modules_import_no_mlx():
    code = ("import sys; import mlx_text2sql.sql, mlx_text2sql.sql.ddl, mlx_text2sql.training.settings, "
            "mlx_text2sql.config; assert not [m for m in sys.modules if m.split('.')[0] == 'mlx'], 'mlx imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
