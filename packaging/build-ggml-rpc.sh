#!/usr/bin/env bash
# Build llama.cpp's RPC backend (libggml-rpc) for the installed llama-cpp-python, without
# rebuilding that package: the two RPC sources of the very same llama.cpp version, compiled
# against the wheel's own ggml libraries (so both share one device registry). Linux only; on
# macOS and Windows reinstall llama-cpp-python with CMAKE_ARGS=-DGGML_RPC=on instead.
#
#   bash packaging/build-ggml-rpc.sh [OUT_FILE]
#
# PYTHON selects the environment (default: the python3 on PATH, the one localllm runs in);
# LLAMA_CPP_SDIST names a llama-cpp-python sdist (.tar.gz) already on disk, else pip fetches
# the one matching the installed version. OUT_FILE defaults to where localllm looks for it.
set -euo pipefail
python=${PYTHON:-python3}
cxx=${CXX:-c++}
command -v "$cxx" >/dev/null || { echo "build-ggml-rpc: no C++ compiler ($cxx); install g++ (apt install g++, dnf install gcc-c++)" >&2; exit 1; }
read -r version libdir default_out < <("$python" - <<'EOF'
import importlib.metadata, pathlib
import llama_cpp
from localllm.backends.llamacpp.rpc import built_library_path
print(importlib.metadata.version("llama_cpp_python"), pathlib.Path(llama_cpp.__file__).parent / "lib", built_library_path())
EOF
)
out=${1:-$default_out}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sdist=${LLAMA_CPP_SDIST:-}
if [ -z "$sdist" ]; then
  "$python" -m pip download --quiet --no-deps --no-binary :all: --dest "$work" "llama-cpp-python==$version"
  sdist=$(ls "$work"/llama_cpp_python-*.tar.gz)
fi
ggml="llama_cpp_python-$version/vendor/llama.cpp/ggml"
tar -xzf "$sdist" -C "$work" "$ggml/include" "$ggml/src/ggml-rpc" "$ggml/src/ggml-impl.h" "$ggml/src/ggml-backend-impl.h" \
  "$ggml/src/ggml-common.h" "$ggml/src/ggml-threading.h" 2>/dev/null \
  || tar -xzf "$sdist" -C "$work" "$ggml"
src="$work/$ggml"
mkdir -p "$(dirname "$out")"
# -l:NAME.so.0 links the sonames libllama itself loads, so the process holds one ggml, not two.
"$cxx" -O2 -std=c++17 -shared -fPIC -DGGML_SHARED -DGGML_BUILD -DGGML_BACKEND_SHARED -DGGML_BACKEND_BUILD \
  -I "$src/include" -I "$src/src" "$src/src/ggml-rpc/ggml-rpc.cpp" "$src/src/ggml-rpc/transport.cpp" \
  -L "$libdir" -l:libggml-base.so.0 -Wl,-rpath,"$libdir" -Wl,--no-undefined -lpthread -o "$out.tmp"
mv "$out.tmp" "$out"
echo "built $out (llama-cpp-python $version)"
