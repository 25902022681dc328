"""Generated tokens' text, a character at a time."""

from __future__ import annotations

import codecs
import ctypes
from collections.abc import Sequence

import llama_cpp


class Pieces:
    """The text of generated tokens, continuing across calls: a character whose bytes span
    tokens comes out whole once its last byte is in."""

    def __init__(self, vocab):
        self._vocab = vocab
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ctypes.create_string_buffer(256)

    def bytes_of(self, token: int) -> bytes:
        """One token's own bytes (part of a character, for some)."""
        n = llama_cpp.llama_token_to_piece(self._vocab, token, self._buffer, 256, 0, False)
        return self._buffer.raw[:n] if n > 0 else b""

    def __call__(self, tokens: Sequence[int]) -> str:
        text = ""
        for token in tokens:
            n = llama_cpp.llama_token_to_piece(self._vocab, token, self._buffer, 256, 0, False)
            text += self._decoder.decode(self._buffer.raw[:n]) if n > 0 else ""
        return text
