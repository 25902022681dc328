"""One request, prepared once for every front end: run, chat, the Python API and each HTTP API.

`prepare(model, request)` renders a chat through the model's template (tools and the thinking
switch included), binds the one grammar (a schema, a required tool call, applied after the
thinking), tokenizes and checks the window; `Prepared.shaper()` turns the engine's events into
the answer's: reasoning apart from the text, tool calls parsed once the reply is whole. A feature
added here reaches every front end with no copy in the server.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from ..errors import ContextOverflowError, UsageError
from ..events import Event, Finished, Reasoning, Token, ToolCalls
from ..options import SamplingOptions
from . import media, reasoning
from .tools import for_template, parse, plan_calls

Message = dict


@dataclass
class Request:
    """A chat (`messages`) or a raw continuation (`prompt` text or `prompt_tokens` ids)."""

    messages: Sequence[Message] | None = None
    prompt: str | None = None
    prompt_tokens: Sequence[int] | None = None
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    think: bool | None = None  # a thinking model's switch (None: the model's default)
    reasoning_effort: str | None = None  # "low", "medium", "high" for a template that takes one (gpt-oss)
    tools: list | None = None  # OpenAI's function tools, rendered by the template
    tool_choice: object = "auto"  # "auto", "none", "required" or {"type": "function", "function": {"name": ...}}


class RequestError(UsageError):
    """A request this model cannot answer as asked; `param` names the field at fault."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Prepared:
    tokens: list[int]
    prompt: str | None  # the chat template's rendering; None for a raw prompt
    sampling: SamplingOptions  # with the one grammar the answer follows, if any
    template: str | None
    tool_kind: str | None  # the template's tool-call family, when tools are offered
    tools: dict

    def shaper(self) -> Shaper:
        return Shaper(reasoning.splitter_for(self.template, self.prompt) if self.prompt is not None else None,
                      self.tool_kind, self.tools)


def prepare(model, request: Request) -> Prepared:
    """`model`: a localllm.Model. Raises RequestError (the field at fault) or ContextOverflowError."""
    sampling, template, prompt = request.sampling, model.chat_template, None
    kind, tools = None, {}
    can = model.capabilities
    if not can.grammar and (sampling.grammar is not None or (request.tools and request.tool_choice not in ("auto", "none"))):
        raise RequestError(f"the {model.engine} engine cannot bind an answer to a schema, a grammar or a required "
                           "tool call", None if sampling.grammar is not None else "tool_choice")
    if sampling.logprobs is not None and not can.logprobs:
        raise RequestError(f"the {model.engine} engine does not report log-probabilities", "logprobs")
    if request.prompt_tokens is not None and not can.token_input:
        raise RequestError(f"the {model.engine} engine takes text prompts, not token ids", "prompt")
    if request.prompt_tokens is not None:
        tokens = list(request.prompt_tokens)
        if tokens and max(tokens) >= model.n_vocab:  # an id past the vocabulary would crash llama.cpp
            raise RequestError(f"'prompt' holds token ids past the vocabulary ({model.n_vocab} tokens)", "prompt")
    elif request.messages is not None:
        try:
            messages, pictures = media.split(request.messages, model.image_marker, model.path.name)
        except UsageError as exc:
            raise RequestError(str(exc), "messages") from None
        try:
            kind, tools, call_grammar = plan_calls(template, request.tools, request.tool_choice,
                                                   sampling.grammar is not None, model.special_token)
        except UsageError as exc:
            raise RequestError(str(exc), "tools") from None
        sampling = replace(sampling, grammar=call_grammar) if call_grammar else sampling
        prompt, variables = render(model, messages, request.think, request.reasoning_effort,
                                   request.tools if kind is not None else None)
        if sampling.grammar is not None:
            try:
                sampling = replace(sampling, grammar=reasoning.answer_grammar(
                    template, variables, prompt, sampling.grammar, call_grammar is not None, model.special_token))
            except UsageError as exc:
                raise RequestError(str(exc)) from None
        tokens = model.tokenize_images(prompt, pictures) if pictures else model.tokenize(prompt)
        if tokens and tokens[-1] < 0:
            raise RequestError("the prompt ends with an image: the chat template must put text after it", "messages")
    else:
        tokens = model.tokenize(request.prompt or "")
    if not tokens:
        raise RequestError("the prompt is empty", "prompt")
    if len(tokens) >= model.n_ctx:
        raise ContextOverflowError(len(tokens), model.n_ctx, model.n_ctx_train)
    if sampling.grammar is not None:
        try:
            model.check_grammar(sampling.grammar)  # now, not as an error once a stream has begun
        except UsageError as exc:
            raise RequestError(str(exc)) from None
    return Prepared(tokens, prompt, sampling, template, kind, tools)


def render(model, messages: Sequence[Message], think: bool | None = None, reasoning_effort: str | None = None,
           tools: list | None = None) -> tuple[str, dict]:
    """The chat template's text for these messages, and the variables it was given (the thinking
    switch, the effort, the tools): what prepare() sends and what a chat counts against its window."""
    try:
        variables = reasoning.template_variables(model.chat_template, think, reasoning_effort)
    except UsageError as exc:
        raise RequestError(str(exc), "think") from None
    if tools:
        variables["tools"] = for_template(tools)
    return model.format_chat(messages, **variables), variables


class Shaper:
    """An engine's events as the answer's: a thinking model's reasoning as Reasoning events, and
    the calls of a reply that may call tools as one ToolCalls event before Finished."""

    def __init__(self, splitter, tool_kind: str | None, tools: dict):
        self.splitter, self.tool_kind, self.tools = splitter, tool_kind, tools
        self.parts: list[str] = []

    def feed(self, event: Event) -> list[Event]:
        if isinstance(event, Token):
            if self.splitter is None:
                return self._kept([event])
            return self._split(self.splitter.feed(event.text), event.logprobs)
        if isinstance(event, Finished):
            return (self._split(self.splitter.flush()) if self.splitter is not None else []) + self._finished(event)
        return [event]

    def _split(self, pieces, logprobs: tuple = ()) -> list[Event]:
        """The pieces as events; a token's scores go with the answer's first piece of it (a
        reasoning model's thinking is reported without them, as OpenAI's API does)."""
        events: list[Event] = []
        for is_reasoning, text in pieces:
            if is_reasoning:
                events.append(Reasoning(text))
            else:
                events.append(Token(text, logprobs))
                logprobs = ()
        return self._kept(events)

    def _kept(self, events: list[Event]) -> list[Event]:
        if self.tool_kind is not None:  # the answer's text, parsed for calls at the end
            self.parts.extend(e.text for e in events if isinstance(e, Token))
        return events

    def _finished(self, finished: Finished) -> list[Event]:
        if self.tool_kind is None:
            return [finished]
        text, calls = parse(self.tool_kind, "".join(self.parts), self.tools, getattr(self.splitter, "calls", ()))
        if not calls:
            return [finished]
        return [ToolCalls(tuple(calls), text), replace(finished, reason="tool_calls")]

    def shape(self, events: Iterator[Event]) -> Iterator[Event]:
        for event in events:
            yield from self.feed(event)

