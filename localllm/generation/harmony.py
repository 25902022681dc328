"""gpt-oss's reply format (OpenAI's "harmony"): a reply is one or more messages, each a header
then ``<|message|>`` then its text, e.g.

    <|channel|>analysis<|message|>The user wants ...<|end|>
    <|start|>assistant<|channel|>final<|message|>Hello!

The ``analysis`` channel is the reasoning; ``final`` (and a ``commentary`` preamble) is the
answer; a header naming a recipient, ``to=functions.NAME`` (in the channel part or after the
role), makes the message a tool call with JSON arguments, ended by ``<|call|>``. llama.cpp
renders ``<|channel|>``, ``<|message|>``, ``<|start|>`` and ``<|constrain|>`` as text; ``<|end|>``
only in some conversions, so a message also ends where the next ``<|start|>`` begins.
"""

from __future__ import annotations

import json
import re

from .stops import hold_back

MESSAGE, START, END, CHANNEL = "<|message|>", "<|start|>", "<|end|>", "<|channel|>"
MAX_HEADER = 512  # a header is a few words; past this it is not one
_OPENINGS = (CHANNEL, " to=", "to=", "assistant")
_CHANNEL = re.compile(r"<\|channel\|>\s*(\w+)")
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")


def speaks(template: str | None) -> bool:
    return bool(template) and CHANNEL in template


class HarmonySplitter:
    """Splits a harmony reply into reasoning and answer, as text arrives; tool calls are kept in
    `calls` as (function name, argument text). Headers are never shown."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self._held = ""
        self._header: str | None = ""  # None: inside a message's text
        self._route = "answer"  # where the current message's text goes: reasoning, answer, or call
        self._call: list[str] | None = None
        self._seen_message = False

    def feed(self, text: str) -> list[tuple[bool, str]]:
        out: list[tuple[bool, str]] = []
        buffer, self._held = self._held + text, ""
        while buffer:
            if self._header is not None:
                buffer, self._header = self._header + buffer, ""
                at = buffer.find(MESSAGE)
                if at >= 0:
                    self._open(buffer[:at])
                    buffer = buffer[at + len(MESSAGE):]
                elif self._not_a_header(buffer):
                    self._header, self._route = None, "answer"  # a model not writing harmony: plain text
                else:
                    self._header = buffer
                    break
                continue
            cut = [i for i in (buffer.find(START), buffer.find(END)) if i >= 0]
            if cut:
                self._emit(out, buffer[: min(cut)])
                marker = START if buffer.startswith(START, min(cut)) else END
                buffer = buffer[min(cut) + len(marker):]
                self._close()
                continue
            ready, self._held = hold_back(buffer, (START, END))
            self._emit(out, ready)
            break
        return out

    def flush(self) -> list[tuple[bool, str]]:
        out: list[tuple[bool, str]] = []
        held, self._held = self._held, ""
        if self._header is None:
            self._emit(out, held)
            self._close()
        elif not self._seen_message and self._header:
            self._emit(out, self._header, route="answer")  # never a message: nothing is lost
        return out

    def _not_a_header(self, header: str) -> bool:
        if self._seen_message:
            return len(header) > MAX_HEADER
        return len(header) > MAX_HEADER or not any(o.startswith(header) or header.startswith(o) for o in _OPENINGS)

    def _open(self, header: str) -> None:
        self._header, self._seen_message = None, True
        channel = _CHANNEL.search(header)
        recipient = _RECIPIENT.search(header)
        if recipient and recipient.group(1).startswith("functions."):
            self._route, self._call = "call", [recipient.group(1).removeprefix("functions."), ""]
        elif recipient or (channel and channel.group(1) == "analysis"):
            self._route = "reasoning"  # the analysis channel, or a built-in tool's call (browser, python)
        else:
            self._route = "answer"

    def _close(self) -> None:
        if self._call is not None:
            self.calls.append((self._call[0], self._call[1]))
            self._call = None
        self._header = ""

    def _emit(self, out: list, text: str, route: str | None = None) -> None:
        route = route or self._route
        if not text:
            return
        if route == "call":
            self._call[1] += text
        else:
            out.append((route == "reasoning", text))


_ANALYSIS = '(<|channel|> "analysis" <|message|> TEXT? <|end|>? <|start|> "assistant")*'
_GRAMMAR = """%llguidance {}
start: ANALYSIS BODY
TEXT: /(.|\\n)+/
"""


def answer_grammar(answer: str) -> str:
    """`answer` (an llguidance grammar) for the final channel, after any reasoning."""
    from .constraints import enforceable, named

    lark = _GRAMMAR.replace("ANALYSIS", _ANALYSIS).replace("BODY", '<|channel|> "final" <|message|> @answer')
    return enforceable(named(lark, answer), "the grammar")


def call_grammar(schemas: dict[str, dict]) -> str:
    """A reply that is a call of one of these tools (name: parameters), after any reasoning."""
    from .constraints import enforceable

    calls = " | ".join(f'"{name} " <|constrain|> "json" <|message|> %json {json.dumps(schema)}'
                       for name, schema in schemas.items())
    lark = _GRAMMAR.replace("ANALYSIS", _ANALYSIS).replace("BODY", f'<|channel|> "commentary to=functions." call\ncall: {calls}')
    return enforceable(lark, "a tool's parameters")
