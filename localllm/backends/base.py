"""The one interface every inference backend implements."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from ..events import Event
from ..options import LoadOptions, SamplingOptions

Message = dict[str, str]
"""A chat message: {"role": "system" | "user" | "assistant", "content": "..."}."""


class LoadedModel(Protocol):
    """A model in memory, ready to generate. Not thread-safe: one generation at a time."""

    path: Path
    n_ctx: int
    n_ctx_train: int
    n_threads: int
    n_gpu_layers: int

    def tokenize(self, text: str) -> list[int]: ...

    def format_chat(self, messages: Sequence[Message]) -> str:
        """Render messages with the model's own chat template, ready for the assistant's turn."""
        ...

    def generate(self, prompt: str | Sequence[int], sampling: SamplingOptions) -> Iterator[Event]:
        """Stream Token events, then one Finished. The KV cache of a shared prompt prefix is reused."""
        ...

    def close(self) -> None: ...


class Backend(Protocol):
    name: str

    def load(self, path: Path, options: LoadOptions) -> LoadedModel: ...
