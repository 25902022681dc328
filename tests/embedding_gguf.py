"""Variants of the starter GGUF with one metadata key changed, written with the gguf package's own
metadata copier. No embedding model or thinking model ships in a PyPI package; these run
llama.cpp's real paths for them.

- an embedding model: the same weights with `llama.pooling_type = mean`, which makes llama.cpp
  pool its hidden states into one vector per input, as embedding GGUFs do;
- the starter with another family's chat template (tests/data/chat_templates), for the code
  that reads what a template does (thinking, switching it off);
- and with that family's special tokens too: unused special tokens of the starter (its code-data
  markers, ids 3-16) renamed, so the vocabulary, and so llama.cpp's and llguidance's handling of
  those tokens, is the family's, without growing the embedding tensor.
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


def write_with_template(starter: Path, target: Path, template: str, tokens: dict[str, int] | None = None) -> Path:
    """`tokens`: text -> gguf.TokenType for special tokens to put in place of the unused ones."""
    changes = {gguf.Keys.Tokenizer.CHAT_TEMPLATE: MetadataDetails(gguf.GGUFValueType.STRING, template)}
    if tokens:
        reader = gguf.GGUFReader(starter, "r")
        texts, types = reader.fields[gguf.Keys.Tokenizer.LIST].contents(), reader.fields[gguf.Keys.Tokenizer.TOKEN_TYPE].contents()
        assert len(tokens) <= len(UNUSED)
        for index, (text, kind) in zip(UNUSED, tokens.items()):
            texts[index], types[index] = text, int(kind)
        array = gguf.GGUFValueType.ARRAY
        changes[gguf.Keys.Tokenizer.LIST] = MetadataDetails(array, texts, sub_type=gguf.GGUFValueType.STRING)
        changes[gguf.Keys.Tokenizer.TOKEN_TYPE] = MetadataDetails(array, types, sub_type=gguf.GGUFValueType.INT32)
    return _copy(starter, target, lambda arch: changes)


UNUSED = range(3, 17)  # <repo_name> ... <empty_output>: markers of the code data SmolLM2 was trained on
HARMONY = {text: gguf.TokenType.CONTROL for text in
           ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>")}
THINK_TOKENS = {"<think>": gguf.TokenType.USER_DEFINED, "</think>": gguf.TokenType.USER_DEFINED}  # as Qwen3's GGUFs have them
