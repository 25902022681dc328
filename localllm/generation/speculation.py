"""Speculative decoding: guess the next tokens cheaply, check them in one batch, keep what the model
agrees with (issue 28). Engine-agnostic parts: the drafter, the cost curve and the controller.

Greedy answers only. At temperature 0 a drafted token is kept only when it is the argmax the model
gives at its position (after the grammar's mask, when there is one), so the answer is the one
decoding token by token gives, up to the float sums of another batch size; with sampling nothing
is drafted, which keeps sampled answers exactly as they were.

Drafts come from the prompt and the answer so far (prompt lookup): the longest n-gram (MAX_N down
to MIN_N tokens) that ends the text is found where it last occurred before, and what followed it is
proposed. Free to produce; it wins where an answer repeats its input (editing code, quoting).

A draft is not free on a CPU: verifying k tokens in one batch costs more than one step (here, 1.5B
Q4_K_M on 2 cores: 2 tokens 1.3x a single step, 9 tokens 4.5x). The controller decides, before
each step, how many tokens to draft (0 = none) from what a batch of each size has cost on this
machine with this model (timed from the decode calls themselves) and how often this answer's drafts
of that n-gram length were accepted: it drafts k tokens only when the tokens it expects per second
beat one token per step by a margin.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

MAX_N, MIN_N = 4, 2
MAX_DRAFT = 16
MARGIN = 1.1  # a draft must promise this much over a plain step: the estimates are noisy
# Before a batch size is timed, each token past the first is assumed to cost this share of a
# single step (measured here: 0.33 to 0.5 for 2 to 8 tokens): pessimistic, so no draft loses much
# while the curve is learned.
PRIOR_MARGINAL = 0.5
# Acceptance assumed for an n-gram match before this answer has shown any, as (accepted, rejected)
# pseudo-counts: a longer match is likelier to go on.
PRIORS = {4: (3.0, 1.0), 3: (2.0, 1.0), 2: (1.0, 1.0)}
DECAY = 0.9  # older verifications weigh less: an answer moves between copying and writing


def output_rows(options) -> int:
    """Rows of logits one llama.cpp decode returns for a load (LoadOptions): each sequence's last
    token's, and, drafting, one per drafted token (at most MAX_DRAFT in a step, all sequences together)."""
    return options.n_seq + (MAX_DRAFT if options.speculation != "off" else 0)


class NgramDrafter:
    """Prompt lookup over the tokens seen so far (prompt, then the answer as it grows)."""

    def __init__(self, tokens: Iterable[int] = ()):
        self.tokens: list[int] = []
        self._next: dict[tuple[int, ...], int] = {}  # n-gram -> where what followed its last occurrence starts
        self.extend(tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        seen, follows = self.tokens, self._next
        for token in tokens:
            end = len(seen)
            for n in range(MIN_N, min(MAX_N, end) + 1):
                follows[tuple(seen[end - n:end])] = end
            seen.append(token)

    def propose(self, limit: int) -> tuple[list[int], int]:
        """Up to `limit` tokens that followed the longest n-gram ending the text, and n (0: none)."""
        seen = self.tokens
        for n in range(min(MAX_N, len(seen)), MIN_N - 1, -1):
            start = self._next.get(tuple(seen[-n:]))
            if start is not None:
                return seen[start:start + limit], n
        return [], 0


class CostCurve:
    """Seconds one decode call of b tokens takes, learned from the calls themselves."""

    def __init__(self) -> None:
        self.seconds: dict[int, float] = {}

    def record(self, size: int, seconds: float) -> None:
        old = self.seconds.get(size)
        self.seconds[size] = seconds if old is None else 0.8 * old + 0.2 * seconds

    def cost(self, size: int) -> float | None:
        """The expected seconds for `size` tokens; None until a single step has been timed."""
        if size in self.seconds:
            return self.seconds[size]
        one = self.seconds.get(1)
        if one is None:
            return None
        below = max((b for b in self.seconds if b < size), default=1)
        return self.seconds[below] + (size - below) * PRIOR_MARGINAL * one


class Controller:
    """How many tokens to draft before each step, and what the drafts achieved."""

    def __init__(self, curve: CostCurve):
        self.curve = curve
        self.counts = {n: list(prior) for n, prior in PRIORS.items()}

    def acceptance(self, n: int) -> float:
        kept, missed = self.counts[n]
        return kept / (kept + missed)

    def draft_length(self, available: int, n: int, base: int = 1, others: int = 0) -> int:
        """The k (0 to `available`) with the most tokens per second expected, for a step whose
        batch holds `base` tokens without the drafts, of which `others` are other sequences'
        (each yielding one token): with several sequences decoding, a draft must beat the batch's
        own throughput."""
        plain = self.curve.cost(base)
        if not available or n not in self.counts or plain is None:
            return 0
        alpha = min(self.acceptance(n), 0.99)
        best, best_rate = 0, MARGIN * (others + 1) / plain
        for k in range(1, min(available, MAX_DRAFT) + 1):
            # Tokens a verification yields: the accepted run of drafts (each kept with probability
            # alpha once the one before was) plus the model's own token after it.
            expected = (1 - alpha ** (k + 1)) / (1 - alpha)
            rate = (others + expected) / self.curve.cost(base + k)
            if rate > best_rate:
                best, best_rate = k, rate
        return best

    def record(self, n: int, drafted: int, accepted: int) -> None:
        kept, missed = self.counts[n]
        self.counts[n] = [kept * DECAY + accepted, missed * DECAY + (accepted < drafted)]


@dataclass
class Checked:
    """What a decoded draft gave: `text` to show; `used` drafted cells now part of the answer (the
    rest are to be removed from the KV cache); then either the answer is `over`, or `feed` holds
    tokens the grammar forced that the draft did not foresee (to evaluate next), or `row` holds the
    masked logits to pick the next token from."""

    text: str
    used: int
    over: bool = False
    feed: list[int] | None = None
    row: object = None


class Speculation:
    """One sequence's drafting: what to draft before a step, and the check of the decoded draft.
    `controller` None drafts whatever the lookup proposes (`--spec ngram`)."""

    def __init__(self, tokens: Iterable[int], controller: Controller | None):
        self.drafter = NgramDrafter(tokens)
        self.controller = controller
        self.n = 0

    def propose(self, answer, room: int, base: int = 1, others: int = 0) -> list[int]:
        """The draft for the next step of `answer` (localllm.generation.sequence.Answer), at most
        `room` tokens (the cells and output rows the caller has)."""
        proposal, self.n = self.drafter.propose(MAX_DRAFT)
        available = max(0, min(len(proposal), room, answer.limit - len(answer.output) - 1))
        if self.controller is None:
            return proposal[:available]
        return proposal[:self.controller.draft_length(available, self.n, base, others)]

    def check(self, answer, draft: list[int], row_at: Callable[[int], object]) -> Checked:
        """Keep the drafts the model agrees with. row_at(j): the logits after the step's last token
        (j = 0) or after draft j - 1, a row the grammar's mask may be written into."""
        texts, used = [], 0
        row = row_at(0)
        while used < len(draft):
            answer.mask(row)
            if int(row.argmax()) != draft[used]:
                return self._checked(answer, draft, texts, used, row=row)
            text, kept = answer.take(draft[used])
            texts.append(text)
            used += 1
            if kept is None:
                return self._checked(answer, draft, texts, used, over=True)
            self.drafter.extend(kept)
            forced = kept[1:]  # tokens the grammar allows no alternative to: they need no check
            if forced:
                same = next((i for i, (f, d) in enumerate(zip(forced, draft[used:])) if f != d), min(len(forced), len(draft) - used))
                used += same
                if same < len(forced):
                    return self._checked(answer, draft, texts, used, feed=forced[same:])
            row = row_at(used)
        answer.mask(row)
        return self._checked(answer, draft, texts, used, row=row)

    def _checked(self, answer, draft: list[int], texts: list[str], used: int, **end) -> Checked:
        answer.drafted, answer.accepted = answer.drafted + len(draft), answer.accepted + used
        if self.controller is not None:
            self.controller.record(self.n, len(draft), used)
        return Checked("".join(texts), used, **end)
