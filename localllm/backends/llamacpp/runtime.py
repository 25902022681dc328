"""llama.cpp for the whole process: its log lines routed (to stderr when verbose, else kept for
error messages), the backend initialised once with ggml's abort hook, the persistent CPU
threadpool, the devices the build can use, and what a failed load said.
"""

from __future__ import annotations

import ctypes
import re
import sys
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import llama_cpp

from ... import crash
from .cpu_buffers import library, registry_function
from .ggml_build import load_dynamic_backends

_GGML_LOG_LEVEL_ERROR = 4
_GGML_LOG_LEVEL_CONT = 5
_GGML_MAX_N_THREADS = 512


class _ThreadpoolParams(ctypes.Structure):
    _fields_ = [
        ("cpumask", ctypes.c_bool * _GGML_MAX_N_THREADS),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


class Threadpool:
    """A persistent ggml CPU threadpool, as llama.cpp's own tools attach to their contexts.

    Without one, ggml builds a throwaway pool for every graph, i.e. every generated token;
    attaching one measured about 3% faster generation here. llama-cpp-python does not bind
    these functions, so they are bound here; a build without them runs with the default.
    """

    def __init__(self, ctx, n_threads: int):
        self._pool = None
        try:
            params_default = library("ggml-base").ggml_threadpool_params_default
            # Asked of the CPU backend's registry: a portable build has no one libggml-cpu to look in.
            new, free = registry_function("CPU", "ggml_threadpool_new"), registry_function("CPU", "ggml_threadpool_free")
            attach = llama_cpp.llama_cpp._lib.llama_attach_threadpool
        except (OSError, AttributeError):
            return
        if not (new and free):
            return
        params_default.argtypes, params_default.restype = [ctypes.c_int], _ThreadpoolParams
        self._new = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_ThreadpoolParams))(new)
        self._free = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(free)
        attach.argtypes, attach.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p], None
        params = params_default(n_threads)
        self._pool = self._new(ctypes.byref(params))
        if self._pool:
            attach(ctx, self._pool, None)

    def free(self) -> None:
        """Call after the context that uses it is freed."""
        if self._pool:
            self._free(self._pool)
            self._pool = None


class _LlamaLog:
    """Routes llama.cpp's C-level log lines: to stderr when verbose, else kept for error messages."""

    def __init__(self) -> None:
        self.verbose = False
        self.errors: deque[str] = deque(maxlen=16)
        self.capture: list[str] | None = None  # every line, while a dry run reads buffer sizes
        self._last_level = 0
        # Keep a reference: ctypes frees the trampoline if the Python callable is collected.
        self._callback = llama_cpp.llama_log_callback(self._on_log)

    def _on_log(self, level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        if level == _GGML_LOG_LEVEL_CONT:
            level = self._last_level
        self._last_level = level
        line = text.decode("utf-8", errors="replace")
        if self.capture is not None:
            self.capture.append(line)
        if self.verbose:
            sys.stderr.write(line)
            sys.stderr.flush()
        if level == _GGML_LOG_LEVEL_ERROR and line.strip():
            self.errors.append(line.strip())

    def install(self) -> None:
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))

    def first_error(self) -> str | None:
        """The first error since the last clear: later ones are mostly its consequences."""
        return self.errors[0] if self.errors else None


log = _LlamaLog()
_init_lock = threading.Lock()
_initialized = False


_ABORT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
# ggml calls this with its reason just before abort(): kept for the one line crash.py prints.
_on_abort = _ABORT_CALLBACK(lambda reason: crash.note_abort(reason.decode("utf-8", "replace")))


def init_backend(verbose: bool) -> None:
    global _initialized
    log.verbose = verbose
    with _init_lock:
        if not _initialized:
            log.install()
            load_dynamic_backends()
            llama_cpp.llama_backend_init()
            try:
                set_callback = library("ggml-base").ggml_set_abort_callback
                set_callback.argtypes, set_callback.restype = [_ABORT_CALLBACK], ctypes.c_void_p
                set_callback(_on_abort)
            except (OSError, AttributeError):
                pass  # a build without it aborts with its own message
            _initialized = True


def load_failure_reason() -> str:
    """The most specific thing llama.cpp said about a failed load, without its function-name prefix."""
    errors = list(log.errors)
    if not errors:
        return "llama.cpp could not load it"
    source, _, reason = errors[0].partition(": ")
    reason = reason.removeprefix("error loading model: ").rstrip(".") or source
    if any(line.startswith("gguf_init") for line in errors):
        return f"invalid or truncated GGUF file ({reason})"
    return reason


_DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}


def devices() -> list[tuple[str, str, int, int, str]]:
    """llama.cpp's backend devices as (name, type, free bytes, total bytes, description), e.g.
    ("CUDA0", "gpu", ...) or an RPC worker's ("RPC0", "gpu", ..., "10.0.0.2:50052").

    These are the devices the installed build can actually use, with memory as llama.cpp sees
    it (for Metal, the recommended working set). llama-cpp-python does not bind this part of
    ggml, hence ctypes; a layout it cannot find yields an empty list.
    """
    init_backend(log.verbose)
    try:
        ggml, base = library("ggml"), library("ggml-base")
    except OSError:
        return []
    ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_dev_get.argtypes, ggml.ggml_backend_dev_get.restype = [ctypes.c_size_t], ctypes.c_void_p
    base.ggml_backend_dev_name.argtypes, base.ggml_backend_dev_name.restype = [ctypes.c_void_p], ctypes.c_char_p
    base.ggml_backend_dev_description.argtypes, base.ggml_backend_dev_description.restype = [ctypes.c_void_p], ctypes.c_char_p
    base.ggml_backend_dev_type.argtypes, base.ggml_backend_dev_type.restype = [ctypes.c_void_p], ctypes.c_int
    size_p = ctypes.POINTER(ctypes.c_size_t)
    base.ggml_backend_dev_memory.argtypes, base.ggml_backend_dev_memory.restype = [ctypes.c_void_p, size_p, size_p], None
    found = []
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        base.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        kind = _DEVICE_TYPES.get(base.ggml_backend_dev_type(dev), "other")
        description = (base.ggml_backend_dev_description(dev) or b"").decode(errors="replace")
        found.append((base.ggml_backend_dev_name(dev).decode(), kind, free.value, total.value, description))
    return found


def supports_gpu_offload() -> bool:
    return bool(llama_cpp.llama_supports_gpu_offload())


_MODEL_BUFFER_LINE = re.compile(r"(\S+) model buffer size = +([\d.]+) MiB")


def model_buffers(lines: list[str]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for line in lines:
        if found := _MODEL_BUFFER_LINE.search(line):
            sizes[found.group(1)] = sizes.get(found.group(1), 0) + round(float(found.group(2)) * 2**20)
    return sizes


_VARIANT = re.compile(r"libggml-cpu-([A-Za-z0-9_]+)\.(?:so|dylib|dll)")


def backend_names() -> list[str]:
    """ggml's registered backends, e.g. ["CPU"], ["CUDA", "CPU"], ["Metal", "BLAS", "CPU"]."""
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


def decode_at(ctx, tokens: Sequence[int], pos: int) -> int:
    """llama_decode of `tokens` at positions pos, pos + 1, ... in sequence 0, the last with logits."""
    batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
    try:
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos + i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i == len(tokens) - 1
        batch.n_tokens = len(tokens)
        return llama_cpp.llama_decode(ctx, batch)
    finally:
        llama_cpp.llama_batch_free(batch)
