"""GGUF headers that lie: made byte by byte, since no writer would produce them."""

from __future__ import annotations

import struct
from pathlib import Path

UINT8, UINT32, STRING, ARRAY, UINT64 = 0, 4, 8, 9, 10


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _kv(key: str, kind: int, value: bytes) -> bytes:
    return _string(key) + struct.pack("<I", kind) + value


def header(n_tensors: int = 0, kvs: list[bytes] | None = None) -> bytes:
    kvs = kvs if kvs is not None else [_kv("general.architecture", STRING, _string("llama")),
                                       _kv("llama.block_count", UINT32, struct.pack("<I", 2))]
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kvs)) + b"".join(kvs)


CASES = {
    # an array that claims 2^62 elements, in a 26 KB file
    "huge-array": header(kvs=[_kv("general.architecture", STRING, _string("llama")),
                              _kv("tokenizer.ggml.scores", ARRAY, struct.pack("<IQ", UINT8, 2**62))]) + b"\0" * 26000,
    "huge-string": header(kvs=[_kv("general.architecture", STRING, struct.pack("<Q", 2**60))]) + b"\0" * 26000,
    "huge-tensor-count": header(n_tensors=2**40) + b"\0" * 26000,
    "huge-string-array": header(kvs=[_kv("general.architecture", STRING, _string("llama")),
                                     _kv("tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", STRING, 2**40))]) + b"\0" * 1000,
    "huge-template": header(kvs=[_kv("general.architecture", STRING, _string("llama")),
                                 _kv("llama.block_count", UINT32, struct.pack("<I", 2)),
                                 _kv("tokenizer.chat_template", STRING, _string("{{ x }}" * 400_000))]),
    "no-blocks": header(kvs=[_kv("general.architecture", STRING, _string("llama")),
                             _kv("llama.block_count", UINT32, struct.pack("<I", 0))]),
}


def write(folder: Path, case: str) -> Path:
    path = folder / f"{case}.gguf"
    path.write_bytes(CASES[case])
    return path
