"""The serve command's checks before anything loads: the bind address and the API key, the
databases, the settings; and the console script knows the command."""

from __future__ import annotations

import pytest

from mlx_text2sql import cli, serve
from mlx_text2sql.errors import ConfigError
from mlx_text2sql.server.limits import is_loopback


def test_loopback_addresses():
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "example.com", ""):
        assert not is_loopback(host), host


def test_binding_elsewhere_without_a_key_is_refused_and_says_how(music_db, capsys, monkeypatch):
    monkeypatch.delenv("MLX_TEXT2SQL_API_KEY", raising=False)
    code = serve.main(["--host", "0.0.0.0", "--db", str(music_db)])
    err = capsys.readouterr().err
    assert code == 2
    assert "refusing to listen on 0.0.0.0 without an API key" in err
    assert "--api-key" in err and "MLX_TEXT2SQL_API_KEY" in err and "Traceback" not in err
    with pytest.raises(ConfigError):
        serve.check_bind("192.168.1.10", None)
    serve.check_bind("0.0.0.0", "a-key")
    serve.check_bind("127.0.0.1", None)


def test_the_key_comes_from_the_flag_or_the_environment(monkeypatch):
    args = serve.build_parser().parse_args([])
    monkeypatch.delenv("MLX_TEXT2SQL_API_KEY", raising=False)
    assert serve.resolve_api_key(args) is None
    monkeypatch.setenv("MLX_TEXT2SQL_API_KEY", "from-env")
    assert serve.resolve_api_key(args) == "from-env"
    args = serve.build_parser().parse_args(["--api-key", "from-flag"])
    assert serve.resolve_api_key(args) == "from-flag"
    with pytest.raises(ConfigError, match="empty"):
        serve.resolve_api_key(serve.build_parser().parse_args(["--api-key", " "]))


def test_bad_databases_and_settings_fail_before_the_model_loads(tmp_path, music_db, capsys):
    not_db = tmp_path / "notes.sqlite"
    not_db.write_text("hello")
    code = serve.main(["--db", str(not_db), "--db", str(tmp_path / "missing.sqlite")])
    err = capsys.readouterr().err
    assert code == 2 and "not a SQLite database" in err and "database not found" in err
    code = serve.main(["--db", f"a={music_db}", "--db", f"a={music_db}"])
    assert code == 2 and "given twice" in capsys.readouterr().err
    code = serve.main(["--db", str(music_db), "--max-queue", "0", "--port", "70000"])
    err = capsys.readouterr().err
    assert code == 2 and "max_queue" in err and "--port" in err


def test_database_names(music_db, tmp_path):
    import shutil

    from mlx_text2sql.server import DatabaseRegistry
    from mlx_text2sql.server.databases import parse_db_arg

    (tmp_path / "b").mkdir()
    twin = shutil.copy(music_db, tmp_path / "b" / "music.sqlite")
    reg = DatabaseRegistry([parse_db_arg(str(music_db)), parse_db_arg(str(twin)), parse_db_arg(f"tunes={music_db}")])
    assert reg.names == ["music", "music-2", "tunes"]
    assert parse_db_arg("C:/x=y.sqlite") == (None, "C:/x=y.sqlite")


def test_console_script_lists_serve(capsys):
    assert cli.main([]) == 0
    assert "serve" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--db", "--host", "--api-key", "--max-queue", "--prefix-cache-mb"):
        assert flag in out


def test_the_command_serves(tmp_path, music_db):
    """``python -m mlx_text2sql.serve`` end to end: a tiny model, port 0, /health and /v1/sql."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    import httpx
    from serverkit import REPLY
    from tinymodels import make_programmed_model

    model = make_programmed_model(tmp_path / "m", REPLY)
    root = Path(__file__).resolve().parent.parent.parent
    env = {**os.environ, "MLX_TEXT2SQL_API_KEY": ""}
    env.pop("MLX_TEXT2SQL_API_KEY")
    proc = subprocess.Popen([sys.executable, "-m", "mlx_text2sql.serve", "--model", str(model), "--db",
                             f"tunes={music_db}", "--port", "0", "--log-level", "info"], cwd=root, env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        port = None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r"running on http://127\.0\.0\.1:(\d+)", line, re.I)
            if m:
                port = int(m.group(1))
                break
        assert port, "".join(lines)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/health").json()["model"] == "m"
        a = httpx.post(url + "/v1/sql", json={"database": "tunes", "question": "who?"}, timeout=60).json()
        assert a["sql"] == REPLY and len(a["rows"]) == 3
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_page_files_are_package_data():
    """Every file of server/static matches a package-data pattern, so a wheel carries the page."""
    import fnmatch
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib", reason="tomllib is in Python 3.11+")

    root = Path(__file__).resolve().parent.parent.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mlx_text2sql.server"]
    files = sorted(p.relative_to(root / "mlx_text2sql" / "server").as_posix()
                   for p in (root / "mlx_text2sql" / "server" / "static").iterdir())
    assert files == ["static/app.js", "static/index.html", "static/style.css"]
    assert all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in files)
