"""The public way to load a model and generate with it. The CLI is one user of this module."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .backends import LoadedModel, Message, get_backend
from .errors import ModelLoadError, ModelNotFoundError, UsageError
from .events import Event, Finished, Token
from .options import LoadOptions, SamplingOptions
from .config import cache_dir
from .gguf_info import ModelSpec, inspect_file
from .registry import resolve

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class Completion:
    text: str
    finished: Finished


class Model:
    """A model loaded in memory. Close it (or use ``with``) to free its memory at once."""

    def __init__(self, loaded: LoadedModel, options: LoadOptions, load_seconds: float):
        self._loaded = loaded
        self.options = options
        self.load_seconds = load_seconds

    @property
    def path(self) -> Path:
        return self._loaded.path

    @property
    def n_ctx(self) -> int:
        return self._loaded.n_ctx

    @property
    def n_ctx_train(self) -> int:
        return self._loaded.n_ctx_train

    @property
    def n_threads(self) -> int:
        return self._loaded.n_threads

    @property
    def n_gpu_layers(self) -> int:
        return self._loaded.n_gpu_layers

    def tokenize(self, text: str) -> list[int]:
        return self._loaded.tokenize(text)

    def format_chat(self, messages: Sequence[Message]) -> str:
        """The prompt text the model's chat template makes of these messages."""
        return self._loaded.format_chat(messages)

    def chat(self, messages: Sequence[Message], sampling: SamplingOptions | None = None) -> Iterator[Event]:
        """Stream the assistant's reply to a conversation: Token events, then one Finished."""
        if not messages or not any(m.get("content", "").strip() for m in messages if m.get("role") == "user"):
            raise UsageError("the prompt is empty")
        prompt = self._loaded.format_chat(messages)
        return self._loaded.generate(prompt, sampling or SamplingOptions())

    def prompt(self, text: str, system: str | None = None, sampling: SamplingOptions | None = None) -> Iterator[Event]:
        """Stream the reply to one user message, with an optional system prompt."""
        messages: list[Message] = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": text})
        return self.chat(messages, sampling)

    def generate(self, prompt: str | Sequence[int], sampling: SamplingOptions | None = None) -> Iterator[Event]:
        """Stream a raw continuation of text or token ids, with no chat template."""
        return self._loaded.generate(prompt, sampling or SamplingOptions())

    def complete(self, text: str, system: str | None = None, sampling: SamplingOptions | None = None) -> Completion:
        """The whole reply to one user message, once it is finished."""
        return collect(self.prompt(text, system, sampling))

    def close(self) -> None:
        self._loaded.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def collect(events: Iterator[Event]) -> Completion:
    parts = []
    for event in events:
        if isinstance(event, Token):
            parts.append(event.text)
        else:
            return Completion("".join(parts), event)
    raise RuntimeError("the backend stopped without a Finished event")


def load_model(ref: str | Path | None = None, options: LoadOptions | None = None, **option_values) -> Model:
    """Load a model by path, installed name or "starter"; None picks the default or best installed.

    Options may be given as a LoadOptions or as its fields, e.g. ``load_model("starter", n_ctx=2048)``.
    """
    options = replace(options or LoadOptions(), **option_values)
    path = resolve(None if ref is None else str(ref))
    check_gguf(path)
    started = time.perf_counter()
    loaded = get_backend().load(path, options)
    return Model(loaded, options, time.perf_counter() - started)


def inspect(path: Path) -> ModelSpec:
    """The shapes of a local GGUF model, from the gguf package, cached across runs."""
    check_gguf(path)
    return inspect_file(path, cache_dir())


def check_gguf(path: Path) -> None:
    """Fail fast, with a clear reason, on files llama.cpp would reject with a vaguer one."""
    if not path.exists():
        raise ModelNotFoundError(str(path), "no such file")
    if path.is_dir():
        raise ModelLoadError(path, "it is a directory, not a .gguf file")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelLoadError(path, exc.strerror or str(exc)) from exc
    if not magic:
        raise ModelLoadError(path, "the file is empty")
    if magic != GGUF_MAGIC:
        raise ModelLoadError(path, "not a GGUF file (llama.cpp needs .gguf; convert or download a GGUF build)")
