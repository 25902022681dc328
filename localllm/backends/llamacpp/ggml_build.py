"""A portable llama.cpp build's ggml backends: where they are, and loading them at all (what the
running build is made of, once loaded, is runtime.py's backend_names and cpu_variant).

A portable wheel (``GGML_BACKEND_DL`` + ``GGML_CPU_ALL_VARIANTS``, packaging/build-wheels.sh)
ships its backends as separate libraries, ``bin/libggml-cpu-<variant>.so`` one per instruction
set level (and ``libggml-cuda.so`` etc.), which ggml loads only when asked:
llama-cpp-python never asks (its issue 2069: "no backends are loaded"). ggml scores every
CPU variant against the running CPU and loads the best.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import llama_cpp

from .cpu_buffers import library


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
