"""The decode rules of one answer, written once for every engine and loop.

An engine evaluates tokens and supplies the logits (or its own pick); an Answer decides the
rest: the seed, the token limit (the request's and the window's room), the greedy shortcut, the
grammar's mask on the logits and the tokens it forces after each pick, the end of turn, stop
strings held back until they are ruled out, and the Finished event with its timings. llama.cpp's
single-sequence loop, its batched loop (`serve`) and the transformers engine all drive it, so a
rule changed here changes for run, chat, serve and the Python API at once.

    answer = Answer(sampling, len(tokens), reused, n_ctx, is_end, text_of, vocabulary)
    while (feed := ...):                   # the engine evaluates the prompt, then what take() returns
        answer.mask(logits)                # the grammar's mask, in place
        text, feed = answer.take(pick(logits))
        ...                                # show text; feed None: the answer is over
    held, finished = answer.finish()
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence

from ..events import Finished, Token, TokenLogprob, Usage
from ..options import SamplingOptions
from .constraints import Constraint
from .stops import StopText


class Answer:
    def __init__(self, sampling: SamplingOptions, n_prompt: int, reused: int, n_ctx: int,
                 is_end: Callable[[int], bool], text_of: Callable[[Sequence[int]], str],
                 vocabulary: Callable[[], object] | None = None, piece: Callable[[int], bytes] | None = None):
        """`is_end(token)`: the model's end of turn; `text_of(tokens)`: their text, continuing
        what it returned before (pieces of a character wait for the rest); `vocabulary()`: the
        grammar engine's view of the vocabulary, asked for only when the sampling has a grammar;
        `piece(token)`: a token's bytes, for the scores SamplingOptions.logprobs asks for."""
        self.sampling = sampling
        self.t_start = time.perf_counter()
        self.seed = secrets.randbelow(2**32 - 1) if sampling.seed is None else sampling.seed
        self.n_prompt, self.reused = n_prompt, reused
        room = n_ctx - n_prompt
        self.limit = room if sampling.max_tokens is None else min(sampling.max_tokens, room)
        # Greedy with no penalty needs no sampler: argmax over the (masked) logits.
        self.greedy = sampling.temperature == 0 and not sampling.penalized
        self.constraint = Constraint(vocabulary(), sampling.grammar) if sampling.grammar else None
        self.is_end, self.text_of = is_end, text_of
        self.stops = StopText(sampling.stop)
        self.output: list[int] = []  # the tokens generated, forced ones included
        self.drafted = self.accepted = 0  # speculation's drafts, and those the model kept
        self.scoring = sampling.logprobs is not None
        self.piece = piece
        self.scores: list[TokenLogprob] = []  # of tokens taken since the last token() call
        self.reason = "length"
        self.done = self.limit <= 0
        self.t_prompt_done: float | None = None
        self.t_first: float | None = None

    def mask(self, logits) -> None:
        """Set what the grammar forbids next to -inf, in place (a numpy row or anything that
        takes a boolean index the same way)."""
        if self.constraint is not None:
            self.constraint.mask(logits)

    def allowed(self, n_vocab: int):
        """The grammar's mask as booleans (engines whose logits live elsewhere), or None."""
        return None if self.constraint is None else self.constraint.allowed(n_vocab)

    def take(self, token: int, row=None) -> tuple[str, list[int] | None]:
        """A picked token: the text now safe to show, and the tokens to evaluate next (the
        picked one and any the grammar forces after it), or None when the answer is over.
        `row`: the (masked) logits it was picked from, when `scoring`."""
        now = time.perf_counter()
        if self.t_prompt_done is None:
            self.t_prompt_done = now
        if not self.sampling.ignore_eos and self.is_end(token):
            return self._over("stop")
        step = [token]
        if self.constraint is not None:
            step += self.constraint.follow(token, self.limit - len(self.output) - 1)
        self.output.extend(step)
        if self.scoring and row is not None:
            self._score(step, row)
        text, stopped = self.stops.feed(self.text_of(step))
        if self.t_first is None:
            self.t_first = now
        if stopped or (self.constraint is not None and self.constraint.complete):
            return self._over("stop", text)
        if len(self.output) >= self.limit:
            return self._over("length", text)
        return text, step

    def _score(self, step: list[int], row) -> None:
        """The picked token's log-probability over the row and the likeliest alternatives; a
        token the grammar forced had no alternative (log-probability 0)."""
        import numpy as np

        def scored(token: int, logprob: float) -> tuple[str, bytes, float]:
            data = self.piece(token)
            return data.decode("utf-8", errors="replace"), data, logprob

        logits = np.asarray(row, dtype=np.float64)
        high = logits.max()
        logprobs = logits - (high + np.log(np.exp(logits - high).sum()))
        n = self.sampling.logprobs
        top = np.argpartition(-logprobs, n)[:n] if 0 < n < len(logprobs) else np.arange(min(n, len(logprobs)))
        top = top[np.argsort(-logprobs[top], kind="stable")]
        text, data, logprob = scored(step[0], float(logprobs[step[0]]))
        self.scores.append(TokenLogprob(text, data, logprob, tuple(scored(int(i), float(logprobs[i])) for i in top)))
        for forced in step[1:]:
            text, data, _ = scored(forced, 0.0)
            self.scores.append(TokenLogprob(text, data, 0.0, ((text, data, 0.0),) if n else ()))

    def token(self, text: str) -> Token:
        """The Token event for `text`, with the scores of the tokens taken since the last one."""
        if not self.scores:
            return Token(text)
        scores, self.scores = tuple(self.scores), []
        return Token(text, scores)

    def _over(self, reason: str, text: str = "") -> tuple[str, None]:
        self.reason, self.done = reason, True
        return text, None

    def finish(self, reason: str | None = None) -> tuple[str, Finished]:
        """Text held back for a stop string that never came (none after a match or a
        cancellation), and the Finished event. `reason` overrides the rules' own ("cancelled")."""
        reason = reason or self.reason
        held = self.stops.flush() if reason != "cancelled" else ""
        usage = Usage(self.n_prompt, len(self.output), self.reused, self.drafted, self.accepted)
        return held, Finished.measured(reason, usage, self.seed, self.t_start, self.t_prompt_done, self.t_first,
                                       time.perf_counter(), self.stops.matched)
