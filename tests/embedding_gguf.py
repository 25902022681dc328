"""Variants of the starter GGUF with one metadata key changed, written with the gguf package's own
metadata copier. No embedding model or thinking model ships in a PyPI package; these run
llama.cpp's real paths for them.

- an embedding model: the same weights with `llama.pooling_type = mean`, which makes llama.cpp
  pool its hidden states into one vector per input, as embedding GGUFs do;
- the starter with another family's chat template (tests/data/chat_templates), for the code
  that reads what a template does (thinking, switching it off).
"""

from __future__ import annotations

from pathlib import Path

import gguf
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

POOLING_MEAN = 1


def _copy(starter: Path, target: Path, changes) -> Path:
    reader = gguf.GGUFReader(starter, "r")
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(target, arch=arch, endianess=reader.endianess)
    copy_with_new_metadata(reader, writer, changes(arch), [])
    return target


def write_embedding_model(starter: Path, target: Path) -> Path:
    return _copy(starter, target, lambda arch: {
        f"{arch}.pooling_type": MetadataDetails(gguf.GGUFValueType.UINT32, POOLING_MEAN)})


def write_with_template(starter: Path, target: Path, template: str) -> Path:
    return _copy(starter, target, lambda arch: {
        gguf.Keys.Tokenizer.CHAT_TEMPLATE: MetadataDetails(gguf.GGUFValueType.STRING, template)})
