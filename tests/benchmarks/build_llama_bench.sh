#!/usr/bin/env bash
# Build one of llama.cpp's own tools (llama-bench by default, or llama-server) from the
# vendor/llama.cpp of the llama-cpp-python sdist that localllm pins, with the same CMake defaults
# pip used, so the two are the same engine.
# Usage: tests/benchmarks/build_llama_bench.sh [WORKDIR] [TARGET]   (about 7 minutes on 2 cores)
# Prints the path of the built binary on its last line.
set -euo pipefail
workdir=${1:-${TMPDIR:-/tmp}/localllm-llama-bench}
target=${2:-llama-bench}
repo=$(cd "$(dirname "$0")/../.." && pwd)
version=$(sed -n 's/.*"llama-cpp-python==\([^"]*\)".*/\1/p' "$repo/pyproject.toml")
mkdir -p "$workdir"
cd "$workdir"
if [ ! -x "build-$version/bin/$target" ]; then
  if [ ! -d "llama_cpp_python-$version" ]; then
    pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d . >&2
    tar xzf "llama_cpp_python-$version.tar.gz"
  fi
  cmake -S "llama_cpp_python-$version/vendor/llama.cpp" -B "build-$version" \
    -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=ON >&2
  cmake --build "build-$version" --target "$target" -j "$(nproc)" >&2
fi
echo "$workdir/build-$version/bin/$target"
