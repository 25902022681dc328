"""An embedding model made from the starter: the same weights with `llama.pooling_type = mean`,
which makes llama.cpp pool its hidden states into one vector per input, as embedding GGUFs do.
No embedding model ships in a PyPI package; this one runs llama.cpp's real embedding path."""

from __future__ import annotations

from pathlib import Path

import gguf
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

POOLING_MEAN = 1


def write_embedding_model(starter: Path, target: Path) -> Path:
    reader = gguf.GGUFReader(starter, "r")
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(target, arch=arch, endianess=reader.endianess)
    pooling = {f"{arch}.pooling_type": MetadataDetails(gguf.GGUFValueType.UINT32, POOLING_MEAN)}
    copy_with_new_metadata(reader, writer, pooling, [])
    return target
