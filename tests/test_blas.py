"""OpenBLAS discovery and the LD_PRELOAD re-exec (no timing assertions)."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_text2sql import blas

ROOT = Path(__file__).resolve().parents[1]
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="the preload is a Linux mechanism")

SCRIPT = """
import sys
first = sys.argv[1]
if first == "mlx":
    import mlx.core  # MLX first: too late for OpenBLAS
import mlx_text2sql
from mlx_text2sql.blas import ensure_fast_blas, blas_status
ensure_fast_blas(quiet=True)
import mlx.core as mx
a = mx.ones((64, 64))
mx.eval(a @ a)  # the BLAS is bound now
maps = open("/proc/self/maps").read()
print("MAPPED=" + ",".join(sorted({l.split()[-1] for l in maps.splitlines() if "libopenblas" in l})))
print("RESULT=" + str((a @ a)[0, 0].item()))
print("STATUS=" + blas_status())
"""


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", blas.OPT_OUT, blas.CHOSEN)}
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


def test_release_is_read_without_loading(tmp_path):
    real = tmp_path / "libopenblasp-r0.3.21.so"
    real.write_text("not loaded")
    link = tmp_path / "libopenblas.so.0"
    link.symlink_to(real)
    assert blas._release(str(link)) == (0, 3, 21)
    assert blas._release(str(tmp_path / "libopenblas.so")) == ()


@linux_only
def test_the_newest_loadable_release_is_chosen():
    lib = blas.find_openblas()
    if lib is None:
        pytest.skip("no OpenBLAS on this machine")
    assert blas._release(lib) == max(blas._release(c) for c in blas.candidates()
                                     if blas._loadable(c) and blas.works(c))
    assert blas.openblas_version(lib)  # the library itself reports a release


def test_explicit_library_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv(blas.CHOSEN, str(tmp_path / "libopenblas.so"))
    assert blas.find_openblas() is None
    junk = tmp_path / "libjunk.so"
    junk.write_text("not a library")
    monkeypatch.setenv(blas.CHOSEN, str(junk))
    assert blas.find_openblas() is None


def test_notice_is_printed_once(capsys):
    blas._announced = False
    blas.ensure_fast_blas()
    blas.ensure_fast_blas()
    err = capsys.readouterr().err
    assert err.count("[mlx-text2sql] BLAS:") == (1 if sys.platform == "linux" else 0)


@linux_only
def test_openblas_is_loaded_before_mlx_in_process(tmp_path):
    lib = blas.find_openblas()
    if lib is None:
        pytest.skip("no OpenBLAS on this machine")
    out, err = _run_script(tmp_path, _clean_env(), "package")
    assert os.path.realpath(lib) in {os.path.realpath(p) for p in out["MAPPED"].split(",")}
    assert out["RESULT"] == "64.0"  # matmuls are right with OpenBLAS bound
    assert out["STATUS"].startswith("OpenBLAS") and "loaded before MLX" in out["STATUS"]
    assert err == ""  # quiet


@linux_only
def test_opt_out_keeps_the_bundled_blas(tmp_path):
    out, _ = _run_script(tmp_path, _clean_env(**{blas.OPT_OUT: "1"}), "package")
    assert "openblas-pthread" not in out["MAPPED"] and "cmeel" not in out["MAPPED"]
    assert out["RESULT"] == "64.0"
    assert out["STATUS"].startswith("reference BLAS") and blas.OPT_OUT in out["STATUS"]


@linux_only
def test_mlx_imported_first_is_reported(tmp_path):
    out, _ = _run_script(tmp_path, _clean_env(), "mlx")
    assert "too late" in out["STATUS"]


def test_benchmark_worker_measures():
    import importlib.util

    spec = importlib.util.spec_from_file_location("blas_benchmark", ROOT / "benchmarks" / "blas.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.worker("numpy", [32], repeats=1)
    assert set(res) == {32} and res[32] > 0


def _libm() -> str | None:
    """A real shared library that is not a BLAS."""
    import glob

    found = sorted(glob.glob("/lib*/*-linux-gnu/libm.so.6") + glob.glob("/usr/lib*/*-linux-gnu/libm.so.6")
                   + glob.glob("/lib64/libm.so.6"))
    return found[0] if found else None


@linux_only
def test_a_library_that_kills_its_process_is_not_chosen(monkeypatch, tmp_path):
    """A build whose kernels need instructions this CPU lacks dies with SIGILL on its first
    product: that happens in the probe's child process, the verdict is cached, and the caller
    lives on."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    libm = _libm()
    if libm is None:
        pytest.skip("no libm to stand in for a library")
    lib = str(tmp_path / "libopenblas.so")
    os.symlink(libm, lib)
    monkeypatch.setattr(blas, "_PROBE", "import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    assert blas.works(lib) is False
    cached = json.loads((tmp_path / "mlx_text2sql" / "blas-probe.json").read_text())
    assert list(cached.values()) == [False]
    monkeypatch.setattr(blas, "_PROBE", "raise SystemExit(0)")
    assert blas.works(lib) is False  # the cached verdict is used


@linux_only
def test_a_library_without_sgemm_fails_the_probe(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = _libm()
    if path is None:
        pytest.skip("no libm here")
    assert blas.works(path) is False


@linux_only
def test_the_chosen_library_passes_the_probe(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    lib = blas.find_openblas()
    if lib is None:
        pytest.skip("no OpenBLAS on this machine")
    assert blas.works(lib) is True
