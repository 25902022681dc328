"""What the installed llama.cpp build is made of: its ggml backends, the CPU kernels in use, and,
for a portable build, loading those backends at all.

A portable wheel (``GGML_BACKEND_DL`` + ``GGML_CPU_ALL_VARIANTS``, packaging/build-wheels.sh)
ships its backends as separate libraries, ``bin/libggml-cpu-<variant>.so`` one per instruction
set level (and ``libggml-cuda.so`` etc.), which ggml loads only when asked:
llama-cpp-python never asks (its issue 2069: "no backends are loaded"). ggml scores every
CPU variant against the running CPU and loads the best.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import llama_cpp

from .cpu_buffers import library

_VARIANT = re.compile(r"libggml-cpu-([A-Za-z0-9_]+)\.(?:so|dylib|dll)")


def backend_folder() -> Path:
    """Where a portable wheel puts its loadable backends: site-packages/bin."""
    return Path(llama_cpp.__file__).parent.parent / "bin"


def is_portable() -> bool:
    lib = Path(llama_cpp.__file__).parent / "lib"
    return not any(lib.glob("libggml-cpu.*")) and any(backend_folder().glob("libggml-cpu-*"))


def load_dynamic_backends() -> None:
    """Load a portable build's backends; a build with them linked in needs nothing."""
    if not is_portable():
        return
    ggml = library("ggml")
    ggml.ggml_backend_load_all_from_path.argtypes, ggml.ggml_backend_load_all_from_path.restype = [ctypes.c_char_p], None
    ggml.ggml_backend_load_all_from_path(str(backend_folder()).encode())


def backend_names() -> list[str]:
    """ggml's registered backends, e.g. ["CPU"], ["CUDA", "CPU"], ["Metal", "BLAS", "CPU"]."""
    from .llamacpp_runtime import devices

    devices()  # initializes llama.cpp (and a portable build's backends) first
    ggml, base = library("ggml"), library("ggml-base")
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    ggml.ggml_backend_reg_get.argtypes, ggml.ggml_backend_reg_get.restype = [ctypes.c_size_t], ctypes.c_void_p
    base.ggml_backend_reg_name.argtypes, base.ggml_backend_reg_name.restype = [ctypes.c_void_p], ctypes.c_char_p
    return [base.ggml_backend_reg_name(ggml.ggml_backend_reg_get(i)).decode() for i in range(ggml.ggml_backend_reg_count())]


def cpu_variant() -> str:
    """A portable build's chosen variant ("zen4", "haswell", ...) from the libraries this process
    mapped, else the instruction sets the native build was compiled with."""
    backend_names()
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    if found := _VARIANT.search(maps):
        return f"portable build, {found.group(1)} kernels"
    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    features = [name.strip() for name, _, value in (part.partition("=") for part in info.split("CPU :")[-1].split("|"))
                if value.strip() == "1"]
    return "native build: " + (" ".join(features) or "no SIMD features")
