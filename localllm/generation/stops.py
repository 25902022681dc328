"""Stop strings over streamed text: generation ends before the first match, which is never shown.

A match may span tokens, so text that could be the start of a stop string is held back until
the next token shows whether it completes one. Streaming therefore never prints a prefix of a
stop string that later completes.
"""

from __future__ import annotations


class StopText:
    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self._held = ""
        self.matched: str | None = None  # the stop string that ended the answer

    def feed(self, text: str) -> tuple[str, bool]:
        """The text now safe to show, and whether a stop string was reached (nothing after it is shown)."""
        if not self.stops:
            return text, False
        buffer = self._held + text
        hits = [(at, stop) for stop in self.stops if (at := buffer.find(stop)) >= 0]
        if hits:
            self._held = ""
            at, self.matched = min(hits)
            return buffer[:at], True
        ready, self._held = hold_back(buffer, self.stops)
        return ready, False

    def flush(self) -> str:
        """What was held back when the answer ends without completing a stop string."""
        held, self._held = self._held, ""
        return held


def hold_back(buffer: str, tags) -> tuple[str, str]:
    """(the text safe to show, the end held back because it begins one of `tags`): the next
    token shows whether that end completes the tag."""
    keep = max((_partial_end(buffer, tag) for tag in tags), default=0)
    return buffer[: len(buffer) - keep], buffer[len(buffer) - keep:]


def _partial_end(buffer: str, tag: str) -> int:
    """The length of the longest end of `buffer` that begins `tag`."""
    for length in range(min(len(tag) - 1, len(buffer)), 0, -1):
        if buffer.endswith(tag[:length]):
            return length
    return 0
