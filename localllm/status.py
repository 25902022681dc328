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
