"""Run MLX on an optimized BLAS on Linux.

MLX's Linux CPU wheel links a reference BLAS (~5 GFLOP/s float32 matmul on our 2-core
machines); with OpenBLAS preloaded the same matmul runs ~50x faster. The dynamic loader only
honours ``LD_PRELOAD`` at process start, so :func:`ensure_fast_blas` re-executes the current
process once with it set, before MLX is imported. macOS (Accelerate) is left untouched.

Opt out with ``MLX_TEXT2SQL_NO_BLAS=1``. OpenBLAS is looked for in Debian's
``libopenblas0-pthread`` (``apt-get install libopenblas0-pthread``; preferred, it brings its
libgfortran) and then the ``cmeel-openblas`` wheel (a dependency on Linux, usable where the system
has libgfortran5); ``MLX_TEXT2SQL_BLAS=/path/libopenblas.so`` names another library.
"""

from __future__ import annotations

import glob
import os
import sys
import sysconfig
from pathlib import Path

OPT_OUT = "MLX_TEXT2SQL_NO_BLAS"
CHOSEN = "MLX_TEXT2SQL_BLAS"
_MARK = "MLX_TEXT2SQL_BLAS_REEXEC"


def find_openblas() -> str | None:
    """Path of an OpenBLAS shared library, or None."""
    explicit = os.environ.get(CHOSEN)
    if explicit:
        return explicit if Path(explicit).is_file() and _loadable(explicit) else None
    # Debian's build first: its package brings the libgfortran it needs. The cmeel wheel's build
    # needs a system libgfortran.so.5, so every candidate is test-loaded before it is chosen.
    candidates = sorted(glob.glob("/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so*"))
    for site in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *sys.path}:
        if site and os.path.isdir(site):
            candidates += sorted(glob.glob(os.path.join(site, "cmeel.prefix", "lib", "libopenblas*.so*")))
    candidates += sorted(glob.glob("/usr/lib/*-linux-gnu/libopenblas*.so*"))
    for lib in candidates:
        if _loadable(lib):
            return lib
    return None


def _loadable(lib: str) -> bool:
    import ctypes

    try:
        ctypes.CDLL(lib)
        return True
    except OSError:
        return False


def blas_status() -> str:
    """A one-line description of the BLAS this process runs with."""
    if sys.platform != "linux":
        return f"platform {sys.platform}: MLX uses its native BLAS"
    preload = os.environ.get("LD_PRELOAD", "")
    if "openblas" in preload:
        return f"OpenBLAS preloaded ({preload.split(':')[0]})"
    if os.environ.get(OPT_OUT):
        return f"reference BLAS ({OPT_OUT} is set): matrix products will be ~50x slower"
    return "reference BLAS (no OpenBLAS found): install cmeel-openblas or libopenblas0-pthread"


def ensure_fast_blas(quiet: bool = False) -> None:
    """On Linux, re-exec this process with OpenBLAS in LD_PRELOAD (at most once).

    Call first thing in a command's ``main()``. No-op on other platforms, when opted out, when
    already preloaded, when no OpenBLAS is found, or when the command line cannot be recovered
    (embedded interpreters).
    """
    if sys.platform != "linux" or os.environ.get(OPT_OUT) or os.environ.get(_MARK):
        return
    if "openblas" in os.environ.get("LD_PRELOAD", ""):
        return
    lib = find_openblas()
    orig = getattr(sys, "orig_argv", None)
    if not lib or not orig:
        return
    if orig[1:2] == ["-c"] or not sys.executable:
        # `python -c ...` and interactive sessions: re-running is not safe; stay as we are.
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    env[_MARK] = "1"
    # OpenBLAS threads: one per core; MLX runs its own ops on top, so more only oversubscribes.
    env.setdefault("OPENBLAS_NUM_THREADS", str(os.cpu_count() or 1))
    if not quiet:
        print(f"[mlx-text2sql] using OpenBLAS for MLX on Linux ({lib}); set {OPT_OUT}=1 to opt out",
              file=sys.stderr, flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *orig[1:]], env)
