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
# Before any batch is timed, each token past the first is assumed to cost this share of a single
# step (measured here: 0.33 to 0.5 for 2 to 8 tokens): pessimistic, so the first drafts are short.
PRIOR_MARGINAL = 0.5
MODEL = "model"  # the draft model's drafts, kept apart from the lookup's in the acceptance counts
# Acceptance assumed for a source's first drafted position before this answer has shown any, as
# (accepted, rejected) pseudo-counts: a longer n-gram match is likelier to go on.
PRIORS = {4: (3.0, 1.0), 3: (2.0, 1.0), 2: (1.0, 1.0), MODEL: (2.0, 1.0)}
DRAFT_TOKENS = 8  # what `--spec draft` drafts each step
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
        """The expected seconds for `size` tokens; None until a single step has been timed. Until
        a batch of several tokens has been timed, PRIOR_MARGINAL of a step per token past the
        first; then an untimed size is taken to cost what the largest timed size below it costs.
        That is optimistic on purpose: CPU kernels work in tiles (here, with the 1.5B model, 16
        tokens cost 219 ms and 17 tokens 261 ms, 4 tokens 97 ms and 3 tokens 116 ms), so costs
        are not smooth in the size, and a size that looks cheap is tried, which times it: each
        size costs at most one step to learn, and what was learned is kept (llamacpp.speculate)."""
        seconds = self.seconds
        if size in seconds:
            return seconds[size]
        one = seconds.get(1)
        if one is None:
            return None
        below = max(b for b in seconds if b < size)
        if len(seconds) == 1:
            return one + (size - 1) * PRIOR_MARGINAL * one
        return seconds[below]


class Controller:
    """How many tokens to draft before each step, and what the drafts achieved.

    Acceptance is counted per source (the n-gram length, or the draft model) and per position in
    the draft: how often the j-th drafted token was kept once the ones before it were. Drafts come
    in runs (a copied passage is kept to its end, then one changed word breaks it), so a token far
    into a kept run is likelier kept than the first: one rate for all positions undervalues long
    drafts where they pay most. Before a position has been seen, its prior rises with it."""

    def __init__(self, curve: CostCurve):
        self.curve = curve
        self.counts = {n: [[kept + j, missed] for j in range(MAX_DRAFT)] for n, (kept, missed) in PRIORS.items()}

    def acceptance(self, n) -> list[float]:
        """The chance of keeping each drafted position of a draft from source n, given the ones before were."""
        return [min(kept / (kept + missed), 0.99) for kept, missed in self.counts[n]]

    def draft_length(self, available: int, n, base: int = 1, others: int = 0, per_token: float = 0.0) -> int:
        """The k (0 to `available`) with the most tokens per second expected, for a step whose
        batch holds `base` tokens without the drafts, of which `others` are other sequences'
        (each yielding one token): with several sequences decoding, a draft must beat the batch's
        own throughput. `per_token`: seconds producing each drafted token costs (a draft model's)."""
        plain = self.curve.cost(base)
        if not available or n not in self.counts or plain is None:
            return 0
        return self._best(self.acceptance(n), available, base, others, per_token)

    def _best(self, chances: list[float], available: int, base: int, others: int, per_token: float) -> int:
        best, best_rate = 0, MARGIN * (others + 1) / self.curve.cost(base)
        expected, reach = 1.0, 1.0  # the model's own token after the kept drafts always comes
        for k in range(1, min(available, MAX_DRAFT) + 1):
            reach *= chances[k - 1]  # the chance that drafts 1..k are all kept
            expected += reach
            rate = (others + expected) / (self.curve.cost(base + k) + k * per_token)
            if rate > best_rate:
                best, best_rate = k, rate
        return best

    def break_even(self, per_token: float) -> float | None:
        """The least acceptance rate (the same at every position) at which drafts costing
        `per_token` each would be used (None: not even at 99%, or nothing timed yet): where a
        draft model starts to pay on this machine."""
        if self.curve.cost(1) is None:
            return None
        return next((a / 100 for a in range(1, 100) if self._best([a / 100] * MAX_DRAFT, MAX_DRAFT, 1, 0, per_token)), None)

    def record(self, n, drafted: int, accepted: int) -> None:
        for j, counts in enumerate(self.counts[n]):
            counts[0] = counts[0] * DECAY + (j < accepted and j < drafted)
            counts[1] = counts[1] * DECAY + (j == accepted and j < drafted)


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
    `mode` "ngram" drafts whatever the lookup proposes, "draft" DRAFT_TOKENS from the draft model
    (`model`, an object with propose(tokens, k) and cost(target_step)) each step, "auto" what the
    controller says pays: the lookup's proposal first, else the draft model's."""

    def __init__(self, tokens: Iterable[int], mode: str, controller: Controller | None = None, model=None):
        self.drafter = NgramDrafter(tokens)
        self.mode, self.controller, self.model = mode, controller, model
        self.n = 0

    def propose(self, answer, room: int, base: int = 1, others: int = 0) -> list[int]:
        """The draft for the next step of `answer` (localllm.generation.sequence.Answer), at most
        `room` tokens (the cells and output rows the caller has). The draft model drafts only for
        a sequence decoding alone (`others` 0): it holds one sequence's cache."""
        room = max(0, min(room, MAX_DRAFT, answer.limit - len(answer.output) - 1))
        if self.mode != "draft":
            proposal, self.n = self.drafter.propose(room)
            k = len(proposal) if self.controller is None else self.controller.draft_length(len(proposal), self.n, base, others)
            if k or self.mode == "ngram":
                return proposal[:k]
        if self.model is None or others or not room:
            return []
        self.n = MODEL
        if self.controller is None:
            k = min(DRAFT_TOKENS, room)
        else:
            k = self.controller.draft_length(room, MODEL, base, 0, self.model.cost(self.controller.curve.cost(1) or 0.0))
        return self.model.propose(self.drafter.tokens, k)

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
