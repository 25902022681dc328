"""The public way to load a model and generate with it. The CLI is one user of this module."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .backends import LoadedModel, Message, backend_for
from .backends.base import Batcher, Capabilities
from .backends.llamacpp.load import check_gguf  # noqa: F401 (public here too)
from .config import cache_dir, load_config
from .errors import ModelLoadError, UsageError
from .events import Event, Finished, Reasoning, Token, ToolCalls
from .generation.media import has_images, text_of
from .generation.request import Request, prepare
from .gguf_info import ModelSpec, inspect_file
from .options import LoadOptions, SamplingOptions
from .registry import resolve


@dataclass(frozen=True)
class Completion:
    text: str
    finished: Finished
    reasoning: str = ""  # a thinking model's reasoning, apart from the answer
    tool_calls: tuple = ()  # localllm.generation.tools.ToolCall, when the reply called tools


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
    def n_vocab(self) -> int:
        return self._loaded.n_vocab

    @property
    def n_threads(self) -> int:
        return self._loaded.n_threads

    def check_grammar(self, grammar: str) -> None:
        """UsageError when this model cannot follow the grammar, or no text satisfies it: said
        before a request starts, not as an error after its stream has begun."""
        vocabulary = getattr(self._loaded, "grammar_vocabulary", None)
        if vocabulary is not None:
            from .generation.constraints import (
                Constraint,  # numpy and llguidance: not for `--help`
            )

            Constraint(vocabulary(), grammar)

    @property
    def threads_in_use(self) -> int:
        """The CPU threads decoding now: n_threads, or fewer while other processes keep cores busy."""
        return getattr(self._loaded, "threads_in_use", self._loaded.n_threads)

    @property
    def n_gpu_layers(self) -> int:
        return self._loaded.n_gpu_layers

    @property
    def weights_mapped(self) -> bool | None:
        """Whether the GGUF file is memory-mapped (llama.cpp); False when its weights were read
        into memory so that none is held twice; None on engines that do not map GGUFs."""
        return getattr(self._loaded, "weights_mapped", None)

    def tokenize(self, text: str) -> list[int]:
        return self._loaded.tokenize(text)

    @property
    def image_marker(self) -> str | None:
        """Where an image goes in a prompt's text, for a vision model (None: the model sees no images)."""
        vision = getattr(self._loaded, "vision", None)
        return vision.marker if vision is not None else None

    def tokenize_images(self, prompt: str, pictures) -> list[int]:
        """The tokens of a prompt holding image_marker once per picture (localllm.images.Picture),
        each image a run of its placeholder id (negative)."""
        return self._loaded.vision.tokenize(prompt, pictures)

    def special_token(self, text: str) -> int | None:
        """The id of `text` where it is one special token to the grammar engine (Qwen3's
        ``</think>``), which a grammar names by id; None otherwise."""
        return self._loaded.special_token(text)

    @property
    def chat_template(self) -> str | None:
        """The model's own chat template (Jinja), None when it has none."""
        return self._loaded.chat_template

    def format_chat(self, messages: Sequence[Message], **variables) -> str:
        """The prompt text the model's chat template makes of these messages (variables such as
        tools or enable_thinking go to the template)."""
        return self._loaded.format_chat(messages, **variables)

    def chat(self, messages: Sequence[Message], sampling: SamplingOptions | None = None,
             think: bool | None = None, tools: list | None = None, tool_choice="auto",
             reasoning_effort: str | None = None) -> Iterator[Event]:
        """Stream the assistant's reply to a conversation: Token events, then one Finished. A
        thinking model's reasoning comes as Reasoning events (localllm.generation.reasoning); think switches
        it on or off where the template can (None: the model's default); reasoning_effort ("low",
        "medium", "high") goes to a template that takes one (gpt-oss's).

        tools (OpenAI's function format) are rendered by the model's template; calls in the reply
        come as one ToolCalls event before Finished (reason "tool_calls"). tool_choice: "auto",
        "none", "required", or {"type": "function", "function": {"name": ...}}: the last two
        constrain the reply to a call whose arguments follow the tool's parameter schema.

        A vision model (a GGUF with its projector) also takes images: a message's content may be
        a list of parts, {"type": "text", "text": ...} and {"type": "image", "image": bytes, a path
        or a localllm.images.Picture} (or OpenAI's image_url parts with data: URLs)."""
        if not messages or not any(text_of(m.get("content")).strip() or has_images([m]) for m in messages
                                   if m.get("role") in ("user", "tool")):
            raise UsageError("the prompt is empty")
        prepared = prepare(self, Request(messages, sampling=sampling or SamplingOptions(), think=think,
                                         reasoning_effort=reasoning_effort, tools=tools, tool_choice=tool_choice))
        return prepared.shaper().shape(self._loaded.generate(prepared.tokens, prepared.sampling))

    def prompt(self, text: str, system: str | None = None, sampling: SamplingOptions | None = None,
               think: bool | None = None, reasoning_effort: str | None = None) -> Iterator[Event]:
        """Stream the reply to one user message, with an optional system prompt."""
        messages: list[Message] = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": text})
        return self.chat(messages, sampling, think, reasoning_effort=reasoning_effort)

    def generate(self, prompt: str | Sequence[int], sampling: SamplingOptions | None = None) -> Iterator[Event]:
        """Stream a raw continuation of text or token ids, with no chat template."""
        return self._loaded.generate(prompt, sampling or SamplingOptions())

    def complete(self, text: str, system: str | None = None, sampling: SamplingOptions | None = None) -> Completion:
        """The whole reply to one user message, once it is finished."""
        return collect(self.prompt(text, system, sampling))

    @property
    def engine(self) -> str:
        """The backend running it: "llamacpp" or "transformers"."""
        return self.options.engine

    @property
    def capabilities(self) -> Capabilities:
        """What its backend can do (batching, token input, ...)."""
        return self._loaded.capabilities

    @property
    def dtype(self) -> str | None:
        """The transformers engine's compute precision (e.g. "bfloat16"); None on llama.cpp, whose
        weights keep the GGUF's own types."""
        return getattr(self._loaded, "dtype", None)

    @property
    def can_embed(self) -> bool:
        """An embedding model (e.g. a GGUF that declares how to pool token states into one vector)."""
        return self._loaded.can_embed

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
    parts, thought, calls = [], [], None
    for event in events:
        if isinstance(event, Token):
            parts.append(event.text)
        elif isinstance(event, Reasoning):
            thought.append(event.text)
        elif isinstance(event, ToolCalls):
            calls = event
        elif isinstance(event, Finished):
            text = calls.text if calls is not None else "".join(parts)
            return Completion(text, event, "".join(thought), calls.calls if calls is not None else ())
    raise RuntimeError("the backend stopped without a Finished event")


def _with_projector(options: LoadOptions, path: Path, engine: str) -> LoadOptions:
    """A vision model's projector: the one given, else an mmproj file beside the model."""
    from .registry import projector_for

    if options.projector is None:
        found = projector_for(path) if engine == "llamacpp" else None
        return replace(options, projector=str(found)) if found else options
    projector = Path(options.projector)
    if engine != "llamacpp":
        raise UsageError(f"a projector (mmproj) gives images to llama.cpp (GGUF models); the {engine} engine takes none")
    if not projector.is_file():
        raise UsageError(f"no projector file {options.projector}")
    return replace(options, projector=str(projector.resolve()))


def load_model(ref: str | Path | None = None, options: LoadOptions | None = None,
               notify: Callable[[str], None] | None = None, **option_values) -> Model:
    """Load a model by path, installed name or "starter"; None picks the default or best installed.

    Options may be given as a LoadOptions or as its fields, e.g. ``load_model("starter", n_ctx=2048)``.
    The backend is chosen from the model's format (a .gguf file: llama.cpp; a safetensors folder:
    transformers), or by ``engine``. What the options leave open (GPU layers, context, KV cache
    type, threads) the backend's planner chooses for this machine. If llama.cpp still runs out of
    memory, the load is retried with fewer GPU layers, a q8_0 KV cache, then shorter contexts;
    ``notify`` hears what changed.
    """
    options = replace(options or LoadOptions(), **option_values)
    notify = notify or (lambda message: None)
    path = resolve(None if ref is None else str(ref))
    backend = backend_for(path, options.engine)
    if options.draft is None and options.speculation in ("draft", "auto"):
        options = replace(options, draft=configured_draft(ref, path))
    if options.speculation == "draft" and not options.draft:
        raise UsageError("--spec draft needs a draft model: --draft MODEL (a small model with the same vocabulary), "
                         "or one paired with this model in the settings")
    if options.draft:
        if backend.name != "llamacpp":
            raise UsageError(f"a draft model drafts for llama.cpp (GGUF models); the {backend.name} engine has none")
        options = replace(options, draft=str(resolve(options.draft)))
    options = _with_projector(options, path, backend.name)
    started = time.perf_counter()
    planned = backend.prepare(path, options, notify)
    if planned.n_seq > 1 and not backend.capabilities.batching:
        notify(f"the {backend.name} engine answers one request at a time")
    while True:  # every rung of the ladder is smaller, and it ends
        try:
            loaded = backend.load(path, planned)
            return Model(loaded, replace(planned, engine=backend.name), time.perf_counter() - started)
        except ModelLoadError as exc:
            smaller = backend.smaller(planned, options)
            if not backend.out_of_memory(exc.reason) or smaller is None:
                raise
            planned, change = smaller
            notify(f"out of memory; retrying with {change}")


def configured_draft(ref, path: Path) -> str | None:
    """The draft model the settings pair with this model (by the reference given, or the file's name)."""
    names = {str(ref), path.name} if ref is not None else {path.name}
    return next((pair["draft"] for pair in load_config().get("drafts", []) if pair.get("model") in names), None)


def inspect(path: Path) -> ModelSpec:
    """The shapes of a local GGUF model, from the gguf package, cached across runs."""
    check_gguf(path)
    return inspect_file(path, cache_dir())


def chat_load_options(**fields) -> LoadOptions:
    """Load options for a multi-turn chat.

    On a CPU-only build flash attention is off: a chat's turns are short prompts evaluated on top
    of a long cached history, and llama.cpp's CPU flash-attention kernel slows with that depth
    (measured here, SmolLM2, turn 20 of a chat: time to first token 1.7-2.0x turn 1 with it,
    1.2-1.3x without). Its cost, a score buffer of heads x ubatch x context, is small at chat
    contexts and is in the planner's estimate.

    The KV cache is saved on disk after each answer ("live"), so a chat reopened later goes on
    from it instead of reading its history again.
    """
    from .backends import build_info

    if fields.get("flash_attn") is None and not build_info().gpu_offload:
        fields["flash_attn"] = False
    fields.setdefault("prompt_cache", "live")
    return LoadOptions(**fields)
