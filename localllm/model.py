"""The public way to load a model and generate with it. The CLI is one user of this module."""

from __future__ import annotations

import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .backends import LoadedModel, Message, get_backend
from .backends.base import Batcher
from .config import cache_dir
from .errors import ModelLoadError, ModelNotFoundError, UsageError
from .events import Event, Finished, Token
from .gguf_info import ModelSpec, header_facts, inspect_file
from .options import DEFAULT_CTX, LoadOptions, SamplingOptions
from .planner import MIN_CTX
from .references import path_exists
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

    @property
    def can_embed(self) -> bool:
        """An embedding model (its GGUF declares how to pool token states into one vector)."""
        return bool(header_facts(self.path, cache_dir())["embedding_only"])

    def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        """One unit-length vector per text, and the tokens they took; for embedding models only."""
        if not self.can_embed:
            raise UsageError(f"{self.path.name} is not an embedding model")
        return self._loaded.embed(texts)

    def batcher(self) -> Batcher:
        """Decode up to ``options.n_seq`` requests together, step by step (see localllm.engine)."""
        return self._loaded.batcher()

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
        elif isinstance(event, Finished):
            return Completion("".join(parts), event)
    raise RuntimeError("the backend stopped without a Finished event")


def load_model(ref: str | Path | None = None, options: LoadOptions | None = None,
               notify: Callable[[str], None] | None = None, **option_values) -> Model:
    """Load a model by path, installed name or "starter"; None picks the default or best installed.

    Options may be given as a LoadOptions or as its fields, e.g. ``load_model("starter", n_ctx=2048)``.
    What the options leave open (GPU layers, context, KV cache type, threads) the planner
    chooses for this machine. If llama.cpp still runs out of memory, the load is retried with
    fewer GPU layers, a q8_0 KV cache, then shorter contexts; ``notify`` hears what changed.
    """
    from .backends import build_info

    options = replace(options or LoadOptions(), **option_values)
    notify = notify or (lambda message: None)
    path = resolve(None if ref is None else str(ref))
    _check_against(check_gguf(path), options)
    started = time.perf_counter()
    build = build_info()
    planned = _plan(path, options, build, notify)
    while True:  # every rung of the ladder is smaller, and it ends
        try:
            loaded = get_backend().load(path, planned)
            return Model(loaded, planned, time.perf_counter() - started)
        except ModelLoadError as exc:
            smaller = _smaller(planned, options)
            if not out_of_memory(exc.reason) or smaller is None:
                raise
            planned, change = smaller
            notify(f"out of memory; retrying with {change}")


def _plan(path: Path, options: LoadOptions, build, notify: Callable[[str], None]) -> LoadOptions:
    """Fill in what the user left open. Reading GGUF metadata takes seconds the first time, so a
    CPU-only build skips it when the file clearly fits in free memory."""
    import psutil

    from .hardware import detect
    from .planner import Overrides, plan

    gpu_choice = build.gpu_offload and options.n_gpu_layers is None
    roomy = path.stat().st_size * 2 + 2**30 < psutil.virtual_memory().available and options.n_seq == 1
    if not gpu_choice and roomy and options.margin is None:
        return replace(options, n_gpu_layers=options.n_gpu_layers or 0)
    chosen = plan(detect(build), inspect_file(path, cache_dir()), Overrides(
        n_ctx=options.n_ctx, n_gpu_layers=options.n_gpu_layers, kv_type=options.kv_type,
        flash_attn=options.flash_attn, tensor_split=options.tensor_split or None, n_threads=options.n_threads,
        margin=options.margin, load_anyway=options.load_anyway, n_seq=options.n_seq,
    ))
    if chosen.fit == "none" and not options.load_anyway:
        raise ModelLoadError(path, f"it does not fit: {chosen.warnings[0]}")
    for warning in chosen.warnings:
        notify(warning)
    # Threads stay open: the backend counts busy cores while the model loads, which is fresher.
    return replace(chosen.load_options(options.verbose), n_threads=options.n_threads)


def _smaller(current: LoadOptions, asked: LoadOptions) -> tuple[LoadOptions, str] | None:
    """The next rung down the out-of-memory ladder, never changing what the user fixed."""
    layers = current.n_gpu_layers or 0
    if layers and asked.n_gpu_layers is None:
        fewer = 0 if layers == -1 else max(0, layers - max(1, layers // 4))
        return replace(current, n_gpu_layers=fewer), f"{fewer} GPU layers"
    if (current.kv_type or "f16") == "f16" and current.flash_attn is not False and asked.kv_type is None:
        return replace(current, kv_type="q8_0"), "a q8_0 KV cache"
    if asked.n_ctx is None and (current.n_ctx or DEFAULT_CTX) // 2 >= MIN_CTX:
        n_ctx = (current.n_ctx or DEFAULT_CTX) // 2
        return replace(current, n_ctx=n_ctx), f"a {n_ctx}-token context"
    return None


def out_of_memory(reason: str) -> bool:
    reason = reason.lower()
    return any(sign in reason for sign in ("out of memory", "insufficient memory", "failed to allocate", "unable to allocate", "cudamalloc"))


def inspect(path: Path) -> ModelSpec:
    """The shapes of a local GGUF model, from the gguf package, cached across runs."""
    check_gguf(path)
    return inspect_file(path, cache_dir())


def _check_against(facts: dict, options: LoadOptions) -> None:
    """Values llama.cpp would take and then abort on or answer badly with, against this model
    and this machine: threads far past the CPUs, a window past the trained one unless forced."""
    from .hardware import usable_cpus

    cpus = usable_cpus()
    if options.n_threads is not None and options.n_threads > 4 * cpus:
        raise UsageError(f"{options.n_threads} threads is more than 4 per CPU this process may use ({cpus}); "
                         "more threads than cores only slows llama.cpp down")
    trained = facts.get("n_ctx_train")
    if options.n_ctx and trained and options.n_ctx > trained and not options.load_anyway:
        raise UsageError(f"the model was trained on a {trained}-token context; a {options.n_ctx}-token window beyond "
                         "it degrades its answers (--ctx 0 uses the trained one; --load-anyway uses yours)")


def check_gguf(path: Path) -> dict:
    """Fail fast, with a clear reason, on files llama.cpp would reject with a vaguer one (or
    abort on); return what the bounded header check found (gguf_info.header_facts)."""
    if not path_exists(path):
        raise ModelNotFoundError(str(path)[:200], "no such file")
    if path.is_dir():
        raise ModelLoadError(path, "it is a directory, not a .gguf file")
    if not stat.S_ISREG(path.stat().st_mode):  # opening a FIFO would wait for a writer for ever
        raise ModelLoadError(path, "not a regular file (a FIFO, socket or device cannot be a model)")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelLoadError(path, exc.strerror or str(exc)) from exc
    if not magic:
        raise ModelLoadError(path, "the file is empty")
    if magic != GGUF_MAGIC:
        raise ModelLoadError(path, "not a GGUF file (llama.cpp needs .gguf; convert or download a GGUF build)")
    return header_facts(path, cache_dir())  # bounded, and what would make llama.cpp abort is refused
