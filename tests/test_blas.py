"""OpenBLAS discovery and the LD_PRELOAD re-exec (no timing assertions)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_text2sql import blas

ROOT = Path(__file__).resolve().parents[1]
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="the preload is a Linux mechanism")

SCRIPT = """
import os, sys
from mlx_text2sql.blas import ensure_fast_blas, blas_status
ensure_fast_blas(quiet=True)
print("PRELOAD=" + os.environ.get("LD_PRELOAD", ""))
print("ARGS=" + " ".join(sys.argv[1:]))
print("STATUS=" + blas_status())
"""


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", blas.OPT_OUT, blas.CHOSEN, "MLX_TEXT2SQL_BLAS_REEXEC")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def _run_script(tmp_path, env, *args):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line), proc.stderr


@linux_only
def test_find_openblas_returns_a_loadable_library():
    lib = blas.find_openblas()
    if lib is None:
        pytest.skip("no OpenBLAS on this machine")
    assert "openblas" in Path(lib).name.lower() and Path(lib).is_file()
    ctypes.CDLL(lib)  # raises OSError if it cannot be loaded


def test_explicit_library_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv(blas.CHOSEN, str(tmp_path / "libopenblas.so"))
    assert blas.find_openblas() is None
    junk = tmp_path / "libjunk.so"
    junk.write_text("not a library")
    monkeypatch.setenv(blas.CHOSEN, str(junk))
    assert blas.find_openblas() is None


def test_opt_out_does_nothing(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("must not re-exec")

    monkeypatch.setenv(blas.OPT_OUT, "1")
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setattr(os, "execve", fail)
    assert blas.ensure_fast_blas() is None
    assert "LD_PRELOAD" not in os.environ
    if sys.platform == "linux":
        assert blas.OPT_OUT in blas.blas_status()


@linux_only
def test_reexec_preloads_openblas(tmp_path):
    lib = blas.find_openblas()
    if lib is None:
        pytest.skip("no OpenBLAS on this machine")
    out, err = _run_script(tmp_path, _clean_env(), "--flag", "value with space")
    assert out["PRELOAD"].split(":")[0] == lib
    assert out["ARGS"] == "--flag value with space"  # the command line survives the re-exec
    assert out["STATUS"].startswith("OpenBLAS preloaded")
    assert err == ""  # quiet=True


@linux_only
def test_reexec_honours_opt_out_in_subprocess(tmp_path):
    out, _ = _run_script(tmp_path, _clean_env(**{blas.OPT_OUT: "1"}))
    assert out["PRELOAD"] == ""
    assert out["STATUS"].startswith("reference BLAS")


@linux_only
def test_no_reexec_for_python_c():
    env = _clean_env()
    code = "from mlx_text2sql.blas import ensure_fast_blas; import os; ensure_fast_blas(); print(os.environ.get('LD_PRELOAD', ''))"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_benchmark_worker_measures():
    import importlib.util

    spec = importlib.util.spec_from_file_location("blas_benchmark", ROOT / "benchmarks" / "blas.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.worker("numpy", [32], repeats=1)
    assert set(res) == {32} and res[32] > 0
