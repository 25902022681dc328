"""Text from files and the network made safe to print on a terminal.

A GGUF's metadata, a file name, a catalog entry or a server's error can carry escape sequences
that retitle the window, rewrite what is on screen or hide text (OSC, CSI, bidi overrides).
Everything localllm prints that came from outside passes through ``printable`` first.
"""

from __future__ import annotations

import re

# C0 and C1 controls and DEL (tab and newline become spaces: output is one line per value),
# and the bidirectional overrides and isolates that reorder what a terminal shows.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(value: object) -> str:
    """str(value) with every control character replaced by U+FFFD (tab and newline by a space)."""
    return _UNSAFE.sub(lambda m: " " if m.group() in "\t\n\r" else "\ufffd", str(value))
