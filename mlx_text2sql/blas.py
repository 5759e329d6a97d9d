"""Run MLX on an optimized BLAS on Linux.

MLX's Linux CPU wheel links a reference BLAS; OpenBLAS runs the same float32 matmuls many
times faster (``benchmarks/blas.py`` measures both). :func:`ensure_fast_blas` loads
OpenBLAS into the process with ``RTLD_GLOBAL`` *before* MLX is loaded: the dynamic linker then
binds MLX's BLAS calls (``cblas_sgemm`` ...) to OpenBLAS, exactly as ``LD_PRELOAD`` would, but
without restarting the process (so it works under pytest, in notebooks and in ``python -c``).
Importing :mod:`mlx_text2sql` does this silently; commands call it again to print a one-line
notice. If MLX was imported before :mod:`mlx_text2sql`, it is too late: a notice says so (or set
``LD_PRELOAD`` yourself). macOS (Accelerate) is left untouched.

Opt out with ``MLX_TEXT2SQL_NO_BLAS=1``. OpenBLAS is looked for in Debian's
``libopenblas0-pthread`` (``apt-get install libopenblas0-pthread``, which brings libgfortran) and
the ``cmeel-openblas`` wheel (a dependency on Linux, usable where the system has libgfortran5);
the newest release that loads *and computes correctly on this processor* is used (each
candidate runs a few ``sgemm`` calls in a child process once; a build whose kernels need
instructions this CPU lacks dies there with SIGILL instead of taking the caller down; the
verdict is cached in ``~/.cache/mlx_text2sql/blas-probe.json`` per library file and processor);
``MLX_TEXT2SQL_BLAS=/path/libopenblas.so`` names another library.
"""

from __future__ import annotations

import glob
import os
import sys
import sysconfig
from pathlib import Path

OPT_OUT = "MLX_TEXT2SQL_NO_BLAS"
CHOSEN = "MLX_TEXT2SQL_BLAS"


def find_openblas() -> str | None:
    """Path of an OpenBLAS shared library, or None: the newest loadable OpenBLAS release among
    Debian's and the ``cmeel-openblas`` wheel's (ties: Debian's)."""
    explicit = os.environ.get(CHOSEN)
    if explicit:
        return explicit if Path(explicit).is_file() and _loadable(explicit) else None
    # Every candidate is test-loaded before it is chosen: the cmeel wheel's build needs a system
    # libgfortran.so.5 (Debian's package brings it). Newer releases have much faster small
    # matrix products (a few rows by a weight matrix), which is what decoding is made of.
    # Newest release first (read from the file or wheel, so that only the chosen library is
    # loaded: a loaded OpenBLAS starts its thread pool, and two pools slow each other down).
    ordered = sorted(candidates(), key=_release, reverse=True)  # stable: ties keep Debian's first
    for lib in ordered:
        if _loadable(lib) and works(lib):
            return lib
    return None


def candidates() -> list[str]:
    """OpenBLAS libraries on this machine: Debian's pthreads build, the cmeel wheel's, others."""
    found = sorted(glob.glob("/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so*"))
    for site in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *sys.path}:
        if site and os.path.isdir(site):
            found += sorted(glob.glob(os.path.join(site, "cmeel.prefix", "lib", "libopenblas*.so*")))
    found += sorted(glob.glob("/usr/lib/*-linux-gnu/libopenblas*.so*"))
    return list(dict.fromkeys(found))


def _release(lib: str) -> tuple[int, ...]:
    """The OpenBLAS release of ``lib`` without loading it: from the versioned file name Debian's
    symlinks point to (``libopenblasp-r0.3.21.so``) or the ``cmeel-openblas`` wheel's version;
    () when unknown."""
    import re

    m = re.search(r"-r(\d+(?:\.\d+)+)\.so", os.path.basename(os.path.realpath(lib)))
    if m:
        return tuple(int(x) for x in m.group(1).split("."))
    if "cmeel.prefix" in lib:
        try:
            from importlib.metadata import version

            m = re.match(r"(\d+(?:\.\d+)+)", version("cmeel-openblas"))
            return tuple(int(x) for x in m.group(1).split(".")) if m else ()
        except Exception:
            return ()
    return ()


def openblas_version(lib: str) -> tuple[int, ...] | None:
    """The release of the OpenBLAS library ``lib`` (e.g. (0, 3, 31)); () if it loads but does
    not say; None if it cannot be loaded."""
    import ctypes
    import re

    try:
        handle = ctypes.CDLL(lib)
    except OSError:
        return None
    try:
        get_config = handle.openblas_get_config
    except AttributeError:
        return ()
    get_config.restype = ctypes.c_char_p
    m = re.search(rb"OpenBLAS (\d+(?:\.\d+)*)", get_config() or b"")
    return tuple(int(x) for x in m.group(1).split(b".")) if m else ()


# Runs in a child process: products of the shapes decoding and training use, checked.
_PROBE = r"""
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
for m, n, k in [(1, 64, 64), (24, 576, 576), (64, 64, 64), (300, 1536, 576)]:
    a = (ctypes.c_float * (m * k))(*([1.0] * (m * k)))
    b = (ctypes.c_float * (k * n))(*([0.5] * (k * n)))
    c = (ctypes.c_float * (m * n))()
    lib.cblas_sgemm(101, 111, 111, m, n, k, ctypes.c_float(1.0), a, k, b, n, ctypes.c_float(0.0), c, n)
    if abs(c[0] - 0.5 * k) > 1e-3 or abs(c[m * n - 1] - 0.5 * k) > 1e-3:
        sys.exit(3)
"""


def _cpu_key() -> str:
    import hashlib
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))][:2]
    except OSError:
        lines = []
    return hashlib.sha256((platform.machine() + "".join(lines)).encode()).hexdigest()[:16]


def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mlx_text2sql" / "blas-probe.json"


def works(lib: str) -> bool:
    """Whether ``lib`` multiplies matrices correctly on this processor, tried in a child
    process (a build for a newer CPU dies there with SIGILL, not here). Cached per library
    file (path, size, mtime) and processor."""
    import json
    import subprocess

    real = os.path.realpath(lib)
    try:
        st = os.stat(real)
    except OSError:
        return False
    key = f"{real}|{st.st_size}|{int(st.st_mtime)}|{_cpu_key()}"
    cache = _cache_file()
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), bool):
        return known[key]
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["OPENBLAS_NUM_THREADS"] = "1"
    try:
        ok = subprocess.run([sys.executable, "-c", _PROBE, real], env=env, timeout=60,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    try:
        known = known if isinstance(known, dict) else {}
        known[key] = ok
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, cache)
    except OSError:
        pass
    return ok


def _loadable(lib: str) -> bool:
    import ctypes

    try:
        ctypes.CDLL(lib)
        return True
    except OSError:
        return False


_loaded: str | None = None
_announced = False


def blas_status() -> str:
    """A one-line description of the BLAS this process runs with."""
    if sys.platform != "linux":
        return f"platform {sys.platform}: MLX uses its native BLAS"
    preload = os.environ.get("LD_PRELOAD", "")
    if _loaded:
        version = ".".join(map(str, openblas_version(_loaded) or ()))
        return f"OpenBLAS{' ' + version if version else ''} loaded before MLX ({_loaded})"
    if "openblas" in preload:
        return f"OpenBLAS preloaded ({preload.split(':')[0]})"
    if os.environ.get(OPT_OUT):
        return f"reference BLAS ({OPT_OUT} is set): matrix products will be many times slower"
    if "mlx.core" in sys.modules:
        return ("reference BLAS: MLX was imported before mlx_text2sql, too late to load OpenBLAS "
                "(import mlx_text2sql first, or set LD_PRELOAD to an OpenBLAS library)")
    return "reference BLAS (no OpenBLAS found): apt-get install libopenblas0-pthread"


def ensure_fast_blas(quiet: bool = False) -> str | None:
    """On Linux, load OpenBLAS globally before MLX loads; returns the library used (or None).

    Idempotent. No-op on other platforms, when opted out, when OpenBLAS is already preloaded,
    or when MLX is already imported. Unless ``quiet``, prints the choice once per process.
    """
    global _loaded, _announced
    if sys.platform != "linux":
        return None
    if not _loaded and not os.environ.get(OPT_OUT) and "openblas" not in os.environ.get("LD_PRELOAD", "") \
            and "mlx.core" not in sys.modules:
        lib = find_openblas()
        if lib:
            import ctypes

            # OpenBLAS reads its thread count when it loads: one thread per core.
            os.environ.setdefault("OPENBLAS_NUM_THREADS", str(os.cpu_count() or 1))
            try:
                ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
                _loaded = lib
            except OSError:
                pass
    if not quiet and not _announced:
        _announced = True
        extra = f"; set {OPT_OUT}=1 to opt out" if _loaded else ""
        print(f"[mlx-text2sql] BLAS: {blas_status()}{extra}", file=sys.stderr, flush=True)
    return _loaded
