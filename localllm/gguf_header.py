"""A bounded first pass over a GGUF header, before anything trusts it.

GGUF files come from anywhere (other tools' folders, mirrors), and their header sizes every
allocation a reader makes: a 26 KB file claiming an array of 2^62 elements makes the `gguf`
package, and llama.cpp, allocate without bound. This pass walks the header with hard limits on
every count and length, each also checked against the bytes the file really has, and on the
tensors' sizes, and returns the scalar metadata (no arrays) and where the header ends. Only
then do `gguf.GGUFReader` or llama.cpp see the file.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

MAGIC = b"GGUF"
MAX_KV = 1 << 16
MAX_TENSORS = 1 << 20
MAX_KEY = 1 << 16
MAX_STRING = 8 << 20
MAX_TEMPLATE = 1 << 20  # real chat templates run to tens of KB; llama.cpp aborts on huge ones
MAX_ARRAY = 1 << 24  # the largest vocabularies have about 260k tokens
MAX_HEADER = 1 << 30
MAX_DIMS = 4
MAX_ELEMENTS = 1 << 48
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")


class HeaderError(ValueError):
    """The header breaks the format or a limit."""


class Truncated(HeaderError):
    """The header runs past the bytes available (a remote read may fetch more)."""

    def __init__(self, needed: int):
        self.needed = needed
        super().__init__(f"the header runs past the end of the file, to byte {needed}")


class _Cursor:
    def __init__(self, data, available: int):
        self.data, self.available, self.at = data, available, 0

    def take(self, n: int) -> int:
        start = self.at
        if n < 0 or start + n > self.available:
            raise Truncated(start + n)
        if start + n > MAX_HEADER:
            raise HeaderError(f"the header is larger than {MAX_HEADER >> 20} MiB")
        self.at += n
        return start

    def unpack(self, fmt: str):
        return struct.unpack_from(fmt, self.data, self.take(struct.calcsize(fmt)))[0]

    def skip_strings(self, count: int, what: str) -> None:
        """Step over `count` strings: the vocabulary's tokens and merges, hundreds of thousands of
        them, so this is the hot loop of the pass (about 15 ms for a 49k-token vocabulary)."""
        data, at, end = self.data, self.at, min(self.available, MAX_HEADER)
        length_of = _U64.unpack_from
        for _ in range(count):
            if at + 8 > end:
                raise Truncated(at + 8) if end == self.available else HeaderError("the header is too large")
            (length,) = length_of(data, at)
            if length > MAX_STRING:
                raise HeaderError(f"an element of {what} is {length} bytes long (the limit is {MAX_STRING})")
            at += 8 + length
        if at > end:
            raise Truncated(at) if end == self.available else HeaderError("the header is too large")
        self.at = at

    def string(self, limit: int, what: str) -> bytes:
        length = self.unpack("<Q")
        if length > limit:
            raise HeaderError(f"{what} is {length} bytes long (the limit is {limit})")
        start = self.take(length)
        return bytes(self.data[start : start + length])


def scan(data, available: int, file_size: int | None = None,
         type_sizes: dict[int, tuple[int, int]] | None = None) -> tuple[dict[str, object], int]:
    """Check a GGUF header held in `data` (its first `available` bytes are real); return its
    scalar key/values and the offset where tensor data starts. Raises HeaderError.

    type_sizes ({ggml type: (block elements, block bytes)}, the gguf package's GGML_QUANT_SIZES)
    also checks each tensor's type, shape and extent against file_size; without it (the load
    path, which does not import gguf) llama.cpp checks those itself.
    """
    c = _Cursor(data, available)
    if bytes(data[: min(4, available)]) != MAGIC:
        raise HeaderError("not a GGUF file")
    c.take(4)
    version = c.unpack("<I")
    if version not in (2, 3):
        raise HeaderError(f"GGUF version {version} is not supported")
    n_tensors, n_kv = c.unpack("<Q"), c.unpack("<Q")
    if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
        raise HeaderError(f"it claims {n_tensors} tensors and {n_kv} metadata keys (limits {MAX_TENSORS}, {MAX_KV})")
    meta: dict[str, object] = {}
    for _ in range(n_kv):
        key = c.string(MAX_KEY, "a metadata key").decode("utf-8", "replace")
        kind = c.unpack("<I")
        if kind in _SCALARS:
            meta[key] = c.unpack(_SCALARS[kind])
        elif kind == _STRING:
            limit = MAX_TEMPLATE if "chat_template" in key else MAX_STRING
            meta[key] = c.string(limit, f"the value of {key}").decode("utf-8", "replace")
        elif kind == _ARRAY:
            item, count = c.unpack("<I"), c.unpack("<Q")
            if count > MAX_ARRAY:
                raise HeaderError(f"{key} claims {count} elements (the limit is {MAX_ARRAY})")
            if item in _SCALARS:
                c.take(count * struct.calcsize(_SCALARS[item]))
            elif item == _STRING:
                c.skip_strings(count, key)
            else:
                raise HeaderError(f"{key} is an array of unknown type {item}")
        else:
            raise HeaderError(f"{key} has unknown type {kind}")
    alignment = meta.get("general.alignment", 32)
    if not isinstance(alignment, int) or not 1 <= alignment <= 1 << 16 or alignment & (alignment - 1):
        raise HeaderError(f"general.alignment {alignment!r} is not a power of two up to 65536")
    extent = 0
    for _ in range(n_tensors):
        name = c.string(MAX_KEY, "a tensor name").decode("utf-8", "replace")
        n_dims = c.unpack("<I")
        if not 1 <= n_dims <= MAX_DIMS:
            raise HeaderError(f"tensor {name} has {n_dims} dimensions")
        dims = [c.unpack("<Q") for _ in range(n_dims)]
        kind, offset = c.unpack("<I"), c.unpack("<Q")
        elements = 1
        for d in dims:
            elements *= d
        if elements > MAX_ELEMENTS:
            raise HeaderError(f"tensor {name} has an impossible shape {dims}")
        if type_sizes is not None:
            if kind not in type_sizes:
                raise HeaderError(f"tensor {name} has unknown type {kind}")
            block, size = type_sizes[kind]
            if dims[0] % block:
                raise HeaderError(f"tensor {name} has an impossible shape {dims}")
            extent = max(extent, offset + elements // block * size)
    data_start = -(-c.at // alignment) * alignment
    if file_size is not None and data_start + extent > file_size:
        raise HeaderError(f"its tensors need {data_start + extent} bytes but the file has {file_size} (truncated?)")
    return meta, data_start


def scan_file(path: Path, type_sizes: dict[int, tuple[int, int]] | None = None) -> dict[str, object]:
    """Check a local GGUF's header (see scan) and return its scalar metadata."""
    size = path.stat().st_size
    if size < 24:
        raise HeaderError("the file is too short to be GGUF")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            return scan(data, size, size, type_sizes)[0]
        except Truncated as exc:
            raise HeaderError(str(exc)) from None


def check_layers(meta: dict[str, object]) -> None:
    """llama.cpp aborts (not fails) on a model without blocks: refuse one first."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise HeaderError("the metadata names no architecture")
    blocks = meta.get(f"{arch}.block_count")
    if not isinstance(blocks, int) or not 1 <= blocks <= 1 << 16:
        raise HeaderError(f"{arch}.block_count is {blocks!r}: a model needs 1 to 65536 blocks")
