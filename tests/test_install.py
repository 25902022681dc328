"""packaging/install.sh and the portable wheelhouse (packaging/build-wheels.sh, which tests/run.sh
builds into $LOCALLLM_WHEELHOUSE).

Accelerator detection runs against fake toolchains on a PATH that holds only them and the basic
tools the script needs; the real installs run from the wheelhouse with the network blocked for
pip (no index, no config, a proxy on a closed port), into fresh environments: a plain virtualenv
when pipx is absent, then pipx.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "packaging" / "install.sh"
BASIC_TOOLS = ("bash", "sh", "uname", "dirname", "grep", "sed", "env", "mkdir", "ln", "cat", "head", "tail", "cut")
BASE_PYTHON = Path(sys.base_prefix) / "bin" / "python3"


def sandbox(tmp_path: Path, fakes: dict[str, str], compiler: bool = True, pipx: bool = False) -> str:
    """A PATH with the basic tools, Python, optionally a C++ compiler and pipx, and fake commands."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tools = list(BASIC_TOOLS) + (["c++"] if compiler else [])
    for tool in tools:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    (bin_dir / "python3").symlink_to(BASE_PYTHON)
    if pipx:
        (bin_dir / "pipx").symlink_to(Path(sys.executable).with_name("pipx"))
    for name, output in fakes.items():
        (bin_dir / name).unlink(missing_ok=True)  # never write through a link to the real tool
        (bin_dir / name).write_text(f"#!/bin/sh\necho '{output}'\n")
        (bin_dir / name).chmod(0o755)
    return str(bin_dir)


def install(tmp_path: Path, path: str, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": path, "HOME": str(tmp_path / "home"), "LOCALLLM_HOME": str(tmp_path / "localllm"),
           "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PIP_CONFIG_FILE": os.devnull,
           "PIPX_HOME": str(tmp_path / "pipx"), "PIPX_BIN_DIR": str(tmp_path / "pipx-bin"),
           "PIPX_MAN_DIR": str(tmp_path / "pipx-man"),
           "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}  # no network for pip
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("fakes, expected", [
    ({"nvcc": "Cuda compilation tools, release 12.4", "nvidia-smi": "GPU 0: NVIDIA GeForce RTX 4090 (UUID: GPU-1)"},
     "cuda (CMAKE_ARGS=-DGGML_CUDA=on)"),
    ({"nvcc": "Cuda compilation tools, release 12.4"}, "no NVIDIA GPU answers"),  # the toolkit alone: a CPU build
    ({"nvcc": "Cuda compilation tools, release 12.4", "nvidia-smi": "No devices were found"}, "accelerator: cpu"),
    ({"rocminfo": "ROCk module is loaded", "hipcc": "HIP version: 6.2"}, "rocm (CMAKE_ARGS=-DGGML_HIP=on)"),
    ({"vulkaninfo": "Vulkan Instance Version: 1.3", "glslc": "shaderc v2023"}, "vulkan (CMAKE_ARGS=-DGGML_VULKAN=on)"),
    ({"vulkaninfo": "Vulkan Instance Version: 1.3"}, "accelerator: cpu"),  # no shader compiler: no Vulkan build
    ({"uname": "Darwin"}, "accelerator: cpu"),  # an Intel Mac (uname -m answers Darwin too: not arm64)
    ({}, "accelerator: cpu"),
])
def test_the_accelerator_found_sets_cmake_args(tmp_path, fakes, expected):
    result = install(tmp_path, sandbox(tmp_path, fakes), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert expected in result.stderr
    assert "+ " in result.stderr and "dry run: nothing was installed" in result.stderr
    assert not (tmp_path / "home").exists()


def test_apple_silicon_builds_metal(tmp_path):
    path = sandbox(tmp_path, {})
    (Path(path) / "uname").unlink()
    (Path(path) / "uname").write_text('#!/bin/sh\n[ "$1" = -m ] && echo arm64 || echo Darwin\n')
    (Path(path) / "uname").chmod(0o755)
    result = install(tmp_path, path, "--dry-run")
    assert "accelerator: metal" in result.stderr, result.stderr


def test_cpu_flag_wins_over_a_gpu(tmp_path):
    result = install(tmp_path, sandbox(tmp_path, {"nvcc": "release 12.4"}), "--dry-run", "--cpu")
    assert "accelerator: cpu" in result.stderr


def test_a_driver_without_the_toolkit_stops_and_says_how_to_get_it(tmp_path):
    result = install(tmp_path, sandbox(tmp_path, {"nvidia-smi": "NVIDIA-SMI 550"}), "--dry-run")
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert "CUDA toolkit (nvcc)" in line and "apt install nvidia-cuda-toolkit" in line and "--cpu" in line


def test_a_missing_compiler_is_named_with_its_install_commands(tmp_path):
    result = install(tmp_path, sandbox(tmp_path, {}, compiler=False), "--dry-run")
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    for fragment in ("no C++ compiler", "apt install build-essential", "dnf install gcc-c++", "xcode-select --install",
                     "winget", "--wheelhouse"):
        assert fragment in line, line


def test_unknown_options_and_help(tmp_path):
    path = sandbox(tmp_path, {})
    assert install(tmp_path, path, "--frobnicate").returncode == 1
    helped = install(tmp_path, path, "--help")
    assert helped.returncode == 0 and "--wheelhouse DIR" in helped.stdout


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    found = Path(os.environ.get("LOCALLLM_WHEELHOUSE", "")) / "cpu"
    assert found.is_dir() and any(found.glob("llama_cpp_python-*.whl")), (
        "no portable wheelhouse: tests/run.sh builds it (LOCALLLM_WHEELHOUSE), or run packaging/build-wheels.sh")
    return found


def test_offline_install_into_a_venv_from_the_portable_wheelhouse(tmp_path, wheelhouse):
    venv = tmp_path / "venv"
    result = install(tmp_path, sandbox(tmp_path, {}), "--wheelhouse", str(wheelhouse), "--venv", str(venv),
                     "--bin-dir", str(tmp_path / "bin-links"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pipx not found" in result.stderr and "ok    versions: localllm" in result.stdout  # doctor ran
    assert (tmp_path / "bin-links" / "localllm").resolve() == (venv / "bin" / "localllm").resolve()
    env = {**os.environ, "LOCALLLM_HOME": str(tmp_path / "localllm"), "HF_HUB_OFFLINE": "1"}
    answer = subprocess.run([str(venv / "bin" / "localllm"), "run", "-m", "starter", "--max-tokens", "8", "--json", "Hi"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert answer.returncode == 0 and json.loads(answer.stdout)["usage"]["completion_tokens"] > 0, answer.stderr
    doctor = subprocess.run([str(venv / "bin" / "localllm"), "doctor", "--json", "--no-load", "--offline"],
                            capture_output=True, text=True, env=env, timeout=120)
    situation = json.loads(doctor.stdout)["situation"]
    # The one wheel carries every CPU level; ggml picked this machine's at start.
    assert situation["cpu_variant"].startswith("portable build, ") and situation["cpu_variant"].endswith(" kernels")
    assert "RPC" in situation["backends"]


def test_offline_install_with_pipx(tmp_path, wheelhouse):
    result = install(tmp_path, sandbox(tmp_path, {}, pipx=True), "--wheelhouse", str(wheelhouse))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pipx install" in result.stderr and "ok    versions: localllm" in result.stdout
    assert (tmp_path / "pipx-bin" / "localllm").exists()
