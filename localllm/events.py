"""What a backend streams while it generates. The CLI, the TUI and any server consume the same iterator."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Union


@dataclass(frozen=True)
class Token:
    """Text produced by one or more tokens (a multi-byte character may span tokens)."""

    text: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    """Prompt tokens whose KV cache was reused from the previous call and not evaluated again."""


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
    "length" (token or context limit) or, for a served sequence, "cancelled"."""

    reason: str
    usage: Usage
    timings: Timings
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PromptProgress:
    """Prompt tokens evaluated so far out of `total`: sent between batches of a long prompt,
    before its first Token, so a front end can show that work is going on."""

    done: int
    total: int


Event = Union[Token, PromptProgress, Finished]
