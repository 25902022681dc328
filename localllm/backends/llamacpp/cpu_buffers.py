"""Where llama.cpp keeps a model's CPU weights, and a placement that leaves out AMX.

llama.cpp puts each CPU weight in the first "extra" buffer type of the CPU device that can
multiply with it (AMX, then CPU_REPACK's interleaved kernels), else in plain CPU memory. When
AMX crashes (issue 17), loading with ``use_extra_bufts = False`` avoids it but also loses the
repack kernels (1.7-2.1x prompt speed for Q4_0 weights). This module gives those back: it asks
the CPU device itself, tensor by tensor, whether CPU_REPACK takes the weight (the same
``supports_op`` check llama.cpp's loader makes), and sends exactly those weights there with
``tensor_buft_overrides``. A weight CPU_REPACK cannot handle must never be sent there: llama.cpp
would dereference a null repack layout while copying it in. Only dense matmul weights are
considered (``gguf_info.MATMUL_WEIGHT``): embeddings are looked up, which CPU_REPACK does not
do, and MoE experts stay in plain CPU memory.

llama-cpp-python binds none of these ggml functions, hence ctypes, on the very libraries
libllama links (``libggml*.so.0``: wheels store symlinks as copies, and a second copy has its
own device registry and buffer types).
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import llama_cpp

from ...gguf_info import MATMUL_WEIGHT
from ...gguf_names import split_files

REPACK = "CPU_REPACK"
AMX = "AMX"
_GGML_TYPE_F32 = 0
_DEVICE_TYPE_CPU = 0
_PROBE_ROWS = 512  # the batch llama.cpp's loader asks supports_op about
_BLOCK = re.compile(r"^blk\.(\d+)\.")


def library(stem: str) -> ctypes.CDLL:
    """One of llama.cpp's libraries, the copy libllama itself is linked against."""
    lib_dir = Path(llama_cpp.llama_cpp.__file__).parent / "lib"
    for name in (f"lib{stem}.so.0", f"lib{stem}.so", f"lib{stem}.dylib", f"{stem}.dll"):
        if (lib_dir / name).exists():
            return ctypes.CDLL(str(lib_dir / name))
    raise OSError(f"{stem} not found in {lib_dir}")


def registry_function(backend: str, name: str) -> int | None:
    """A function a ggml backend offers through its registry entry (`backend` as registered, e.g.
    "CPU", "RPC"), or None: what a portable build, which has no single library per backend to look
    symbols up in, and a build with RPC compiled in both answer."""
    ggml, base = library("ggml"), library("ggml-base")
    ggml.ggml_backend_reg_by_name.argtypes, ggml.ggml_backend_reg_by_name.restype = [ctypes.c_char_p], ctypes.c_void_p
    proc = base.ggml_backend_reg_get_proc_address
    proc.argtypes, proc.restype = [ctypes.c_void_p, ctypes.c_char_p], ctypes.c_void_p
    reg = ggml.ggml_backend_reg_by_name(backend.encode())
    return (proc(reg, name.encode()) or None) if reg else None


class _TensorHead(ctypes.Structure):
    """The first fields of ggml's ``struct ggml_tensor`` (ggml.h), all this module reads or sets."""

    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4)]


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class _GgufInitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]


class TensorOverride(ctypes.Structure):
    """llama.cpp's ``llama_model_tensor_buft_override``: a regex on tensor names and a buffer type."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


class _Ggml:
    """The ggml functions this module calls, typed once."""

    def __init__(self) -> None:
        base, reg = library("ggml-base"), library("ggml")
        vp, sz = ctypes.c_void_p, ctypes.c_size_t
        signatures = {
            (reg, "ggml_backend_dev_by_type"): ([ctypes.c_int], vp),
            (base, "ggml_backend_dev_backend_reg"): ([vp], vp),
            (base, "ggml_backend_reg_get_proc_address"): ([vp, ctypes.c_char_p], vp),
            (base, "ggml_backend_buft_name"): ([vp], ctypes.c_char_p),
            (base, "ggml_backend_buft_alloc_buffer"): ([vp, sz], vp),
            (base, "ggml_backend_buffer_free"): ([vp], None),
            (base, "ggml_backend_dev_supports_op"): ([vp, vp], ctypes.c_bool),
            (base, "ggml_tensor_overhead"): ([], sz),
            (base, "ggml_init"): ([_InitParams], vp),
            (base, "ggml_free"): ([vp], None),
            (base, "ggml_new_tensor_2d"): ([vp, ctypes.c_int, ctypes.c_int64, ctypes.c_int64], vp),
            (base, "ggml_mul_mat"): ([vp, vp, vp], vp),
            (base, "ggml_get_tensor"): ([vp, ctypes.c_char_p], vp),
            (base, "gguf_init_from_file"): ([ctypes.c_char_p, _GgufInitParams], vp),
            (base, "gguf_free"): ([vp], None),
            (base, "gguf_get_n_tensors"): ([vp], ctypes.c_int64),
            (base, "gguf_get_tensor_name"): ([vp, ctypes.c_int64], ctypes.c_char_p),
            (base, "gguf_get_tensor_size"): ([vp, ctypes.c_int64], sz),
            (base, "gguf_get_tensor_offset"): ([vp, ctypes.c_int64], sz),
            (base, "gguf_get_data_offset"): ([vp], sz),
        }
        for (lib, name), (argtypes, restype) in signatures.items():
            function = getattr(lib, name)
            function.argtypes, function.restype = argtypes, restype
            setattr(self, name.removeprefix("ggml_"), function)


_ggml: _Ggml | None = None


def _api() -> _Ggml:
    global _ggml
    if _ggml is None:
        _ggml = _Ggml()
    return _ggml


def _cpu_device() -> int | None:
    return _api().backend_dev_by_type(_DEVICE_TYPE_CPU)


def extra_buffer_types() -> dict[str, int]:
    """The CPU device's extra weight buffer types by name (e.g. "AMX", "CPU_REPACK"), in llama.cpp's order.

    Listing them is what makes ggml ask Linux for AMX permission; a build or CPU without AMX
    kernels has no "AMX" entry.
    """
    g = _api()
    device = _cpu_device()
    if not device:
        return {}
    address = g.backend_reg_get_proc_address(g.backend_dev_backend_reg(device), b"ggml_backend_dev_get_extra_bufts")
    if not address:
        return {}
    listing = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(address)(device)
    found: dict[str, int] = {}
    index = 0
    while listing and listing[index]:
        found[g.backend_buft_name(listing[index]).decode()] = listing[index]
        index += 1
    return found


class Repacked(NamedTuple):
    block: int | None  # None: the output head
    file: Path  # the part of a split GGUF that holds it
    offset: int  # of its data in that file
    size: int


def repack_weights(path: Path) -> tuple[dict[str, Repacked], int]:
    """The matmul weights of a GGUF model that CPU_REPACK takes on this CPU, and the model's block
    count. No weights when the build has no CPU_REPACK. Asked once per file per process: a load
    both places its weights and decides how they are held once (llamacpp_params)."""
    return _scan(tuple((part, part.stat().st_size, part.stat().st_mtime_ns) for part in split_files(path)))


@functools.lru_cache(maxsize=8)
def _scan(parts: tuple[tuple[Path, int, int], ...]) -> tuple[dict[str, Repacked], int]:
    g = _api()
    buft = extra_buffer_types().get(REPACK)
    device = _cpu_device()
    taken: dict[str, Repacked] = {}
    n_layer = 0
    for part, _size, _mtime in parts:
        meta = ctypes.c_void_p()
        gguf = g.gguf_init_from_file(os.fsencode(part), _GgufInitParams(True, ctypes.pointer(meta)))
        if not gguf:
            raise OSError(f"llama.cpp cannot read the GGUF header of {part}")
        try:
            for index in range(g.gguf_get_n_tensors(gguf)):
                name = g.gguf_get_tensor_name(gguf, index).decode("utf-8", "replace")
                if block := _BLOCK.match(name):
                    n_layer = max(n_layer, int(block.group(1)) + 1)
                match = MATMUL_WEIGHT.match(name)
                if buft and device and match and _repack_takes(g, buft, device, g.get_tensor(meta, name.encode())):
                    taken[name] = Repacked(int(match.group(1)) if match.group(1) is not None else None, part,
                                           g.gguf_get_data_offset(gguf) + g.gguf_get_tensor_offset(gguf, index),
                                           g.gguf_get_tensor_size(gguf, index))
        finally:
            g.gguf_free(gguf)
            g.free(meta)
    return taken, n_layer


def _repack_takes(g: _Ggml, buft: int, device: int, weight: int) -> bool:
    """Whether the CPU device would multiply this weight from a CPU_REPACK buffer, asked as
    llama.cpp's loader asks it: a 512-row product, the weight in a dummy buffer of that type."""
    head = _TensorHead.from_address(weight)
    ctx = g.init(_InitParams(g.tensor_overhead() * 4, None, True))
    dummy = g.backend_buft_alloc_buffer(buft, 0)
    try:
        rows = g.new_tensor_2d(ctx, _GGML_TYPE_F32, head.ne[0], _PROBE_ROWS)
        product = g.mul_mat(ctx, weight, rows)
        head.buffer = dummy
        return bool(g.backend_dev_supports_op(device, product))
    finally:
        head.buffer = None
        g.backend_buffer_free(dummy)
        g.free(ctx)


def repacked_ranges(path: Path, n_gpu_layers: int, gpu_offload: bool) -> list[tuple[Path, int, int]]:
    """(file, offset, bytes) of this model's CPU-resident weights that llama.cpp copies into
    CPU_REPACK's interleaved layout when it loads it here."""
    weights, n_layer = repack_weights(path)
    first_gpu_block, output_on_cpu = cpu_layers(n_layer, n_gpu_layers, gpu_offload)
    return [(w.file, w.offset, w.size) for w in weights.values()
            if (output_on_cpu if w.block is None else w.block < first_gpu_block)]


def cpu_layers(n_layer: int, n_gpu_layers: int, gpu_offload: bool) -> tuple[int, bool]:
    """(blocks below this number stay on the CPU, whether the output head does), as llama.cpp
    assigns layers: the last n_gpu_layers of blocks-plus-output go to the GPUs."""
    if not gpu_offload or n_gpu_layers == 0:
        return n_layer, True
    if n_gpu_layers < 0:
        return 0, False
    return max(0, n_layer + 1 - n_gpu_layers), False


def override_patterns(weights: dict[str, int | None], first_gpu_block: int, output_on_cpu: bool) -> list[str]:
    """Few regexes naming exactly the CPU-resident weights in `weights`: llama.cpp compiles every
    pattern once per tensor it loads, so one per tensor kind, not one per tensor."""
    by_kind: dict[str, list[int]] = {}
    patterns = []
    for name, block in weights.items():
        if block is None:
            if output_on_cpu:
                patterns.append(r"^output\.weight$")
        elif block < first_gpu_block:
            by_kind.setdefault(name.split(".")[2], []).append(block)
    for kind, blocks in sorted(by_kind.items()):
        numbers = "|".join(str(b) for b in sorted(blocks))
        patterns.append(rf"^blk\.(?:{numbers})\.{kind}\.weight$")
    return patterns


class Overrides:
    """A NULL-terminated ``tensor_buft_overrides`` array, with the strings it points to kept alive."""

    def __init__(self, patterns: Sequence[str], buft: int):
        self._patterns = [p.encode() for p in patterns]
        self.array = (TensorOverride * (len(patterns) + 1))(*(TensorOverride(p, buft) for p in self._patterns))

    @property
    def pointer(self) -> int:
        return ctypes.addressof(self.array)
