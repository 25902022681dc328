"""A transient one-line status on stderr, for a person watching a terminal (never in pipes)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Status:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled and sys.stderr.isatty()

    def show(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write(f"\r\x1b[2K{text}")
            sys.stderr.flush()

    def clear(self) -> None:
        self.show("")


@contextmanager
def slow_work(text: str, after_s: float = 1.0) -> Iterator[None]:
    """Say what is being done if it takes longer than after_s; Ctrl-C still interrupts it."""
    status = Status()
    timer = threading.Timer(after_s, status.show, (f"{text}… (Ctrl-C stops)",))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        status.clear()


class PromptEta:
    """"reading the prompt: 3072/8192 tokens (37%), about 9 s left", from the rate measured so far.

    Each token of a long prompt costs more than the one before (attention reads every earlier
    one), so the time per chunk is fitted as a + b x depth over the chunks read so far and summed
    over the chunks left: a flat rate promised 119 s for a read of 260 s. The line appears as soon
    as reading starts, with the count; the estimate once a chunk has been timed. An image's
    encoder is named while it runs ("encoding an image"): seconds of work before its count moves."""

    def __init__(self, start: float):
        self.samples: list[tuple[int, float]] = []  # (tokens done, seconds since start)
        self.start = start

    def line(self, event, now: float) -> str:
        self.samples.append((event.done, now - self.start))
        head = f"reading the prompt: {'encoding an image, ' if event.image else ''}{event.done}/{event.total} tokens " \
               f"({event.done * 100 // max(event.total, 1)}%)"
        left = self.seconds_left(event.total)
        return head if left is None else f"{head}, about {left:.0f} s left"

    def seconds_left(self, total: int) -> float | None:
        chunks = [(d1, (t1 - t0) / (d1 - d0)) for (d0, t0), (d1, t1) in zip(self.samples, self.samples[1:]) if d1 > d0]
        if not chunks:
            return None
        done = self.samples[-1][0]
        if len(chunks) == 1:
            per_token, slope = chunks[0][1], 0.0
        else:  # least squares of seconds per token against depth
            n = len(chunks)
            mean_d = sum(d for d, _ in chunks) / n
            mean_s = sum(s for _, s in chunks) / n
            var = sum((d - mean_d) ** 2 for d, _ in chunks)
            slope = max(0.0, sum((d - mean_d) * (s - mean_s) for d, s in chunks) / var) if var else 0.0
            per_token = mean_s + slope * (done - mean_d)
        left = total - done
        return max(0.0, left * per_token + slope * left * left / 2)
