"""Models that think aloud before answering: Qwen3 and the DeepSeek-R1 distills write
``<think>...</think>`` first, gpt-oss an analysis message (localllm.generation.harmony). Their part is kept
apart from the answer.

Whether a model does is read from its chat template (it mentions ``<think>``). Where the
template itself opens the block at the end of the prompt (DeepSeek-R1's ``<｜Assistant｜><think>\\n``)
the output starts inside it, with no opening tag to see; where it supports switching
(Qwen3's ``enable_thinking``), ``think=False`` renders the prompt with an empty block. The tags
may arrive split across tokens: text that could be the start of one is held back until the next
token settles it, so no part of a tag is ever shown as answer or reasoning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ..events import Event, Finished, Reasoning, Token
from ..options import REASONING_EFFORTS
from . import harmony
from .stops import hold_back

OPEN, CLOSE = "<think>", "</think>"
SWITCH = "enable_thinking"
EFFORT = "reasoning_effort"  # gpt-oss's: how long it reasons


def thinks(template: str | None) -> bool:
    return bool(template) and OPEN in template or harmony.speaks(template)


def can_switch(template: str | None) -> bool:
    return bool(template) and SWITCH in template


def template_variables(template: str | None, think: bool | None, effort: str | None = None) -> dict:
    """What to tell the template about thinking: think switches it where the template can (True
    on a model that always thinks asks for nothing new); effort is gpt-oss's reasoning effort."""
    from ..errors import UsageError

    variables: dict = {}
    if effort is not None:
        if effort not in REASONING_EFFORTS:
            raise UsageError(f"the reasoning effort must be {', '.join(REASONING_EFFORTS)}, not {str(effort)[:20]}")
        if not template or EFFORT not in template:
            raise UsageError("this model's chat template takes no reasoning effort (gpt-oss's does)")
        variables[EFFORT] = effort
    if think is None:
        return variables
    if not thinks(template):
        if think:
            raise UsageError("this model does not think: its chat template has no reasoning part")
        return variables
    if not can_switch(template):
        if not think:
            raise UsageError("this model's chat template cannot switch its thinking off"
                             + (" (a low reasoning effort shortens it)" if template and EFFORT in template else ""))
        return variables
    return {**variables, SWITCH: think}


LEVELS = ("none", "minimal", "low", "medium", "high", "xhigh")  # OpenAI's Responses efforts


def from_level(template: str | None, level: str) -> tuple[bool | None, str | None]:
    """(think, effort) for another API's reasoning level (OpenAI's Responses effort, Anthropic's
    thinking budget): gpt-oss's own effort where the template takes one (it cannot stop thinking,
    so "none" is its lowest), else the thinking switch: off for "none" and "minimal", on above."""
    if template and EFFORT in template:
        return None, level if level in REASONING_EFFORTS else "high" if level == "xhigh" else "low"
    return level not in ("none", "minimal"), None


def answer_grammar(template: str | None, variables: dict, prompt: str, grammar: str | None,
                   whole_reply: bool = False, special: Callable[[str], int | None] = lambda text: None) -> str | None:
    """A schema or grammar binds the answer, not the thinking: for a thinking model (not switched
    off) the grammar lets the reasoning run free up to </think>, then binds what follows; on
    gpt-oss it binds the final channel. `whole_reply`: a gpt-oss tool call's grammar, which
    already spans the reply. `special`: the model's id for a tag that is one special token."""
    from .constraints import after_thinking

    if grammar is None or not thinks(template) or variables.get(SWITCH) is False:
        return grammar
    if harmony.speaks(template):
        return grammar if whole_reply else harmony.answer_grammar(grammar)
    return after_thinking(grammar, opened_by_prompt(prompt), special(OPEN), special(CLOSE))


def splitter_for(template: str | None, prompt: str) -> ThinkSplitter | harmony.HarmonySplitter | None:
    """What keeps this model's reasoning apart from its answer (None: it does not think)."""
    if harmony.speaks(template):
        return harmony.HarmonySplitter()
    return ThinkSplitter(opened_by_prompt(prompt)) if thinks(template) else None


def opened_by_prompt(prompt: str) -> bool:
    """The rendered prompt ends inside an open think block (the answer starts by thinking)."""
    last_open, last_close = prompt.rfind(OPEN), prompt.rfind(CLOSE)
    return last_open > last_close and not prompt[last_open + len(OPEN):].strip()


class ThinkSplitter:
    def __init__(self, inside: bool = False):
        self.inside = inside
        self._held = ""
        self._started = False  # anything but whitespace seen yet, outside the block
        self._after_close = False  # the answer's leading blank lines after </think> are dropped

    def feed(self, text: str) -> list[tuple[bool, str]]:
        """(is_reasoning, text) pieces now safe to show."""
        out: list[tuple[bool, str]] = []
        buffer = self._held + text
        self._held = ""
        while buffer:
            tag = CLOSE if self.inside else OPEN
            at = buffer.find(tag)
            if self.inside:
                if at >= 0:
                    self._emit(out, True, buffer[:at])
                    buffer, self.inside, self._after_close = buffer[at + len(tag):], False, True
                    continue
            elif at >= 0 and not self._started and not buffer[:at].strip():
                buffer, self.inside = buffer[at + len(tag):], True  # a block only counts at the start
                continue
            ready, self._held = hold_back(buffer, (tag,)) if (self.inside or not self._started) else (buffer, "")
            self._emit(out, self.inside, ready)
            break
        return out

    def flush(self) -> list[tuple[bool, str]]:
        out: list[tuple[bool, str]] = []
        held, self._held = self._held, ""
        self._emit(out, self.inside, held)
        return out

    def _emit(self, out: list, reasoning: bool, text: str) -> None:
        if not reasoning:
            if self._after_close:
                text = text.lstrip("\n")
                if text:
                    self._after_close = False
            if text.strip():
                self._started = True
        if text:
            out.append((reasoning, text))


def split_events(events: Iterator[Event], splitter: ThinkSplitter | harmony.HarmonySplitter) -> Iterator[Event]:
    """The same stream with the thinking part as Reasoning events instead of Tokens."""
    for event in events:
        if isinstance(event, Token):
            for is_reasoning, text in splitter.feed(event.text):
                yield Reasoning(text) if is_reasoning else Token(text)
        else:
            if isinstance(event, Finished):
                for is_reasoning, text in splitter.flush():
                    yield Reasoning(text) if is_reasoning else Token(text)
            yield event
