#!/usr/bin/env bash
# Install the peer implementations the speed benchmarks compare us against, into the ACTIVE
# Python environment, without moving any package we already depend on:
#
#   PyTorch + PEFT (+ accelerate)   training peer  (benchmarks/peers/peft_train.py)
#   llama-cpp-python                generation peer (benchmarks/peers/llamacpp_generate.py)
#
#   bash benchmarks/setup_peers.sh [--no-torch] [--no-llamacpp] [--python PY]
#
# Environment instead of flags: SKIP_TORCH=1, SKIP_LLAMACPP=1, PYTHON=...
#
# Why the pins:
# - torch==2.13.0 has a CPU-only wheel in the local wheel folder of our machines; any other
#   version makes pip fetch the CUDA build (GBs). peft and accelerate are installed in the SAME
#   pip command as the pinned torch, so the resolver cannot swap torch for another version.
# - Every package already installed is passed to pip as a constraint at its current version,
#   so installing the peers never upgrades or downgrades transformers, numpy, tokenizers, ...
# - llama-cpp-python is published as an sdist only: it compiles llama.cpp with cmake (a few
#   minutes on 2 cores). CMAKE_ARGS builds it for this CPU (GGML_NATIVE: AVX2/AVX-512/FMA as
#   the host has them) with OpenMP threads and no BLAS; pip caches the built wheel, so a second
#   install (e.g. into another venv) takes seconds. CMAKE_ARGS=... overrides the build flags
#   (and then bypasses pip's cache, which does not know about them).
#
# A virtual environment that sees our global packages keeps the peers away from everything else:
#   python -m venv --system-site-packages /tmp/peers-venv && . /tmp/peers-venv/bin/activate
#   bash benchmarks/setup_peers.sh
set -euo pipefail

TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PEFT_SPEC="${PEFT_SPEC:-peft==0.21.2}"
ACCELERATE_SPEC="${ACCELERATE_SPEC:-accelerate==1.15.0}"
LLAMACPP_VERSION="${LLAMACPP_VERSION:-0.3.36}"
SKIP_TORCH="${SKIP_TORCH:-0}"
SKIP_LLAMACPP="${SKIP_LLAMACPP:-0}"
PYTHON="${PYTHON:-python}"

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --no-torch) SKIP_TORCH=1 ;;
    --no-llamacpp) SKIP_LLAMACPP=1 ;;
    --python) PYTHON="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "setup_peers.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' \
  || { echo "setup_peers.sh: $PYTHON is not Python >= 3.10" >&2; exit 2; }
echo "python: $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"

# Constraints: every installed distribution at its current version (plain name==version lines
# only; editable or direct-URL installs cannot be constraints and are not touched anyway).
CONSTRAINTS="$(mktemp -t peers-constraints.XXXXXX)"
trap 'rm -f "$CONSTRAINTS"' EXIT
"$PYTHON" -m pip list --format=freeze 2>/dev/null \
  | grep -E '^[A-Za-z0-9._-]+==[^ @]+$' \
  | grep -v -i -E '^(torch|peft|accelerate|llama[-_]cpp[-_]python|pip|setuptools|wheel)==' \
  > "$CONSTRAINTS" || true

elapsed() { echo $(( $(date +%s) - $1 )); }

if [ "$SKIP_TORCH" != "1" ]; then
  t0=$(date +%s)
  echo "== installing torch==$TORCH_VERSION $PEFT_SPEC $ACCELERATE_SPEC"
  "$PYTHON" -m pip install -c "$CONSTRAINTS" "torch==$TORCH_VERSION" "$PEFT_SPEC" "$ACCELERATE_SPEC"
  "$PYTHON" - <<'EOF'
import torch, peft, accelerate, transformers
print(f"torch {torch.__version__} (CUDA: {torch.version.cuda}), peft {peft.__version__}, "
      f"accelerate {accelerate.__version__}, transformers {transformers.__version__}, "
      f"threads {torch.get_num_threads()}")
EOF
  echo "== torch + peft installed in $(elapsed "$t0") s"
else
  echo "== skipping torch + peft (SKIP_TORCH=1 / --no-torch)"
fi

if [ "$SKIP_LLAMACPP" != "1" ]; then
  t0=$(date +%s)
  DEFAULT_CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_OPENMP=ON -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
  CACHE_FLAG=()
  if [ -n "${CMAKE_ARGS:-}" ] && [ "$CMAKE_ARGS" != "$DEFAULT_CMAKE_ARGS" ]; then
    # pip's wheel cache is keyed by the sdist, not by CMAKE_ARGS: a cached native build would
    # be reinstalled as is, so a custom build must bypass the cache.
    CACHE_FLAG=(--no-cache-dir)
  fi
  export CMAKE_ARGS="${CMAKE_ARGS:-$DEFAULT_CMAKE_ARGS}"
  export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
  echo "== building llama-cpp-python==$LLAMACPP_VERSION (CMAKE_ARGS=$CMAKE_ARGS, $CMAKE_BUILD_PARALLEL_LEVEL jobs)"
  "$PYTHON" -m pip install "${CACHE_FLAG[@]}" -c "$CONSTRAINTS" "llama-cpp-python==$LLAMACPP_VERSION"
  "$PYTHON" - <<'EOF'
import llama_cpp
info = llama_cpp.llama_print_system_info()
print(f"llama_cpp {llama_cpp.__version__}: {info.decode() if isinstance(info, bytes) else info}")
EOF
  echo "== llama-cpp-python installed in $(elapsed "$t0") s"
else
  echo "== skipping llama-cpp-python (SKIP_LLAMACPP=1 / --no-llamacpp)"
fi
