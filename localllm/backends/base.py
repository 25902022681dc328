"""The one interface every inference backend implements."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..errors import ContextOverflowError, UsageError
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
    n_vocab: int
    can_embed: bool
    capabilities: Capabilities

    def tokenize(self, text: str) -> list[int]: ...

    def special_token(self, text: str) -> int | None:
        """The id of `text` where it is one token the grammar engine treats as special."""
        ...

    chat_template: str | None  # the model's own Jinja template, None when it has none

    def format_chat(self, messages: Sequence[Message], **variables) -> str:
        """Render messages with the model's own chat template, ready for the assistant's turn;
        variables go to the template (e.g. enable_thinking)."""
        ...

    def generate(self, prompt: str | Sequence[int], sampling: SamplingOptions) -> Iterator[Event]:
        """Stream Token events, then one Finished. The KV cache of a shared prompt prefix is reused."""
        ...

    def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        """Unit-length embeddings of each text, and the token count (embedding models only)."""
        ...

    def batcher(self) -> Batcher:
        """Several sequences decoded together (LoadOptions.n_seq of them), for serving."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, read before work is queued: load_model says when --parallel cannot
    batch, and localllm.generation.request refuses token-id prompts and grammars (schemas,
    required tool calls) an engine cannot take, as a usage error (HTTP 400) naming it."""

    batching: bool = False  # several sequences per step (serve --parallel); else one at a time
    token_input: bool = False  # prompts given as token ids
    grammar: bool = False  # answers bound by a grammar (localllm.generation.constraints)
    logprobs: bool = False  # each token's log-probability and alternatives (SamplingOptions.logprobs)


class Backend(Protocol):
    """One inference engine: what it can open, how it prepares a load (checks, planning), its
    out-of-memory ladder, and the load itself. `load_model` asks these and assumes nothing."""

    name: str
    capabilities: Capabilities

    def can_load(self, path: Path) -> bool: ...

    def prepare(self, path: Path, options: LoadOptions, notify: Callable[[str], None]) -> LoadOptions:
        """Check the model and the options, and fill in what the caller left open."""
        ...

    def smaller(self, current: LoadOptions, asked: LoadOptions) -> tuple[LoadOptions, str] | None:
        """The next, smaller load after running out of memory (never changing what was asked), and what changed."""
        ...

    def out_of_memory(self, reason: str) -> bool: ...

    def load(self, path: Path, options: LoadOptions) -> LoadedModel: ...


def prompt_tokens(model: LoadedModel, prompt: str | Sequence[int]) -> list[int]:
    """A raw prompt as tokens, refused (never cut) when empty or when it does not fit the window."""
    tokens = model.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
    if not tokens:
        raise UsageError("the prompt is empty")
    if len(tokens) >= model.n_ctx:
        raise ContextOverflowError(len(tokens), model.n_ctx, model.n_ctx_train)
    return tokens


def reusable_prefix(cached: Sequence[int], tokens: Sequence[int]) -> int:
    """How many leading prompt tokens a KV cache holding `cached` already has, leaving at least
    one to evaluate: the first sample needs the logits of a prompt token."""
    common = 0
    for old, new in zip(cached, tokens):
        if old != new:
            break
        common += 1
    return min(common, len(tokens) - 1)


@dataclass(eq=False)
class SequenceRequest:
    """One generation for a batcher: prompt tokens in, events out through `emit`.

    `emit` runs on the engine thread with each Token and PromptProgress, then one Finished, or
    a LocalLLMError instead of Finished when the generation fails; it must not block. `cancel()`
    may be called from any thread: the sequence ends at the next step and frees its slot.
    """

    tokens: list[int]
    sampling: SamplingOptions
    emit: Callable[[Event | Exception], None]
    cancelled: bool = field(default=False)

    def cancel(self) -> None:
        self.cancelled = True


class Batcher(Protocol):
    """Decodes up to `slots` sequences together, one step at a time, on the engine thread."""

    slots: int

    def free_slots(self) -> int: ...

    def add(self, request: SequenceRequest) -> None: ...

    def busy(self) -> bool: ...

    def step(self) -> None: ...

    def fail_all(self, message: str) -> None: ...

    def idle(self) -> bool:
        """Work kept for the engine thread's idle time (saving a prompt state): one piece of it;
        True if there was any (the engine asks again before it sleeps)."""

    def close(self) -> None: ...


class TokenizerChat:
    """Tokens and the chat template of a Hugging Face tokenizer (``self._tokenizer``, ``self.path``), for the
    backends that have one: transformers, and remote engines tokenizing here."""

    def tokenize(self, text: str) -> list[int]:
        # A rendered chat template already holds the special tokens it wants.
        bos = self._tokenizer.bos_token
        special = not (bos and text.startswith(bos))
        return list(self._tokenizer(text, add_special_tokens=special)["input_ids"])

    @property
    def chat_template(self) -> str | None:
        template = self._tokenizer.chat_template
        return template if isinstance(template, str) else None

    def format_chat(self, messages: Sequence[Message], **variables) -> str:
        if not self._tokenizer.chat_template:
            raise UsageError(f"{self.path.name} has no chat template: use --raw for text completion")
        try:
            return self._tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True,
                                                       **variables)
        except Exception as exc:  # a template is code from the checkpoint; its errors are its own
            raise UsageError(f"the model's chat template failed: {str(exc)[:200]}") from None


def stretches(tokens: Sequence[int]) -> list[tuple[int, int]]:
    """(start, end) of the stretches of `tokens` that are all text or all one image (a run of its
    negative placeholder id: localllm.backends.llamacpp.vision)."""
    bounds, start = [], 0
    for i in range(1, len(tokens) + 1):
        if i == len(tokens) or (tokens[i] != tokens[i - 1] and (tokens[i] < 0 or tokens[i - 1] < 0)):
            bounds.append((start, i))
            start = i
    return bounds
