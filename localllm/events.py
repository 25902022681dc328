"""What a backend streams while it generates. The CLI, the TUI and any server consume the same iterator."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Union


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability under the model (after a grammar's mask, before
    temperature and penalties), and the likeliest alternatives at its position, likeliest first."""

    token: str
    bytes: bytes
    logprob: float
    top: tuple[tuple[str, bytes, float], ...] = ()


@dataclass(frozen=True)
class Token:
    """Text produced by one or more tokens (a multi-byte character may span tokens); with
    SamplingOptions.logprobs, the scores of the tokens generated since the last Token."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Reasoning:
    """Text of a thinking model's reasoning (its ``<think>`` block), kept apart from the answer."""

    text: str


@dataclass(frozen=True)
class ToolCalls:
    """The tool calls parsed from a finished reply (localllm.generation.tools.ToolCall), and its text without them."""

    calls: tuple
    text: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    """Prompt tokens whose KV cache was reused from the previous call and not evaluated again."""
    drafted_tokens: int = 0
    """Tokens speculation guessed and checked (localllm.generation.speculation)..."""
    accepted_tokens: int = 0
    """...and those of them the model agreed with, which cost no step of their own."""


@dataclass(frozen=True)
class Timings:
    """Seconds and tokens per second of one generation. Rates are None when there was nothing to time."""

    prompt_s: float
    ttft_s: float
    generation_s: float
    prompt_tokens_per_s: float | None
    generation_tokens_per_s: float | None


@dataclass(frozen=True)
class Finished:
    """The last event. reason: "stop" (the model ended its turn, a stop string, the grammar's end),
    "length" (token or context limit) or, for a served sequence, "cancelled"; `stop_sequence`: the
    stop string that ended it, if one did."""

    reason: str
    usage: Usage
    timings: Timings
    seed: int
    stop_sequence: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def measured(cls, reason: str, usage: Usage, seed: int, t_start: float, t_prompt_done: float | None,
                 t_first: float | None, t_end: float, stop_sequence: str | None = None) -> Finished:
        """From the clock readings of one generation: started, prompt evaluated (first sample),
        first text shown, ended; those never reached count as the end."""
        t_prompt_done = t_prompt_done or t_end
        prompt_s = t_prompt_done - t_start
        generation_s = t_end - t_first if t_first is not None else 0.0
        evaluated, generated = usage.prompt_tokens - usage.cached_tokens, usage.completion_tokens
        return cls(reason, usage, Timings(
            prompt_s=prompt_s,
            ttft_s=(t_first or t_end) - t_start,
            generation_s=generation_s,
            prompt_tokens_per_s=evaluated / prompt_s if evaluated and prompt_s > 0 else None,
            # n tokens take n-1 decode steps after the first one is sampled.
            generation_tokens_per_s=(generated - 1) / generation_s if generated > 1 and generation_s > 0 else None,
        ), seed, stop_sequence)

    @classmethod
    def cancelled(cls, prompt_tokens: int) -> Finished:
        """A served sequence stopped before its end (its client left, or the server is stopping)."""
        return cls("cancelled", Usage(prompt_tokens, 0), Timings(0.0, 0.0, 0.0, None, None), 0)


@dataclass(frozen=True)
class PromptProgress:
    """Prompt tokens evaluated so far out of `total`: sent between batches of a long prompt,
    before its first Token, so a front end can show that work is going on."""

    done: int
    total: int
    image: bool = False  # an image comes next: its encoder runs, which takes seconds on a CPU


Event = Union[Token, Reasoning, ToolCalls, PromptProgress, Finished]
