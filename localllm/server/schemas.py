"""The HTTP API's requests: one internal request, read from OpenAI's or Ollama's request bodies
(the answers' shapes are in replies.py).

Everything in a body is checked here (types, ranges, counts, sizes) and a bad field is an
ApiError naming it, which the app turns into the API's own error object with status 400.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .. import safejson
from ..errors import UsageError
from ..generation.media import has_images, text_of
from ..options import (
    MAX_LOGPROBS,
    MAX_STOP_CHARS,
    MAX_STOPS,
    REASONING_EFFORTS,
    SAMPLING_FIELDS,
    SamplingOptions,
)

MAX_MESSAGES = 4096
MAX_PARTS = 64  # of one message's content
MAX_PROMPT_IDS = 1 << 20
ROLES = ("system", "user", "assistant", "tool", "developer")


class ApiError(Exception):
    """A request the API refuses: an HTTP status, a message, and the field it is about."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code
        self.headers = headers or {}

    def openai(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def ollama(self) -> dict:
        return {"error": self.message}

    def anthropic(self) -> dict:
        kind = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                503: "overloaded_error"}.get(self.status, "invalid_request_error" if self.status < 500 else "api_error")
        return {"type": "error", "error": {"type": kind, "message": self.message}}


@dataclass
class GenerationJob:
    """What any of the generation endpoints asks for, whichever API it came through."""

    model: str | None
    sampling: SamplingOptions
    messages: list[dict[str, str]] | None = None  # a chat; else `prompt` is raw text (or prompt_tokens, ids)
    prompt: str | None = None
    prompt_tokens: list[int] | None = None
    stream: bool = False
    include_usage: bool = False
    grammar: str | None = None  # the answer must follow it (response_format, Ollama's format)
    tools: list | None = None  # OpenAI function tools, rendered by the model's template (localllm.generation.tools)
    tool_choice: Any = "auto"
    think: bool | None = None  # a thinking model's switch (localllm.generation.reasoning.template_variables)
    reasoning_effort: str | None = None  # gpt-oss's
    reasoning_level: str | None = None  # another API's level (reasoning.LEVELS), mapped onto the template's own
    keep_alive: float | None | str = "unchanged"  # Ollama's: seconds the model stays loaded after
    n: int = 1  # answers to the same prompt (OpenAI's n), each its own sequence
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))


def has_lone_surrogate(value: object) -> bool:
    """JSON's \\ud800 escapes decode to strings that no encoder will take further on."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


_SURROGATE = re.compile("[\ud800-\udfff]")


# ---- field checks --------------------------------------------------------------------------
def _get(body: dict, name: str, kinds: type | tuple[type, ...], default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    # JSON has no separate int: 1 is a valid float, but true is no number.
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ApiError(400, f"'{name}' must be {_kind_name(kinds)}, not a boolean", name)
    if float in (kinds if isinstance(kinds, tuple) else (kinds,)) and isinstance(value, int):
        value = float(value)
    if not isinstance(value, kinds):
        raise ApiError(400, f"'{name}' must be {_kind_name(kinds)}", name)
    if isinstance(value, float) and not math.isfinite(value):
        raise ApiError(400, f"'{name}' must be a finite number", name)
    return value


def _kind_name(kinds) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array", dict: "an object"}
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(names[k] for k in kinds)


def _stops(value: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ApiError(400, f"'{name}' must be a string or an array of strings", name)
    if len(values) > MAX_STOPS or any(not v or len(v) > MAX_STOP_CHARS for v in values):
        raise ApiError(400, f"'{name}': at most {MAX_STOPS} strings of 1 to {MAX_STOP_CHARS} characters", name)
    return tuple(values)


def _sampling(source: dict, api: str, where: str = "", **fields) -> SamplingOptions:
    """The sampling fields this API names (`api`: "openai" or "ollama", from the one option table
    in localllm.options), each checked there, plus `fields` read apart (limit, stop strings)."""
    for spec in SAMPLING_FIELDS:
        for name in getattr(spec, api):
            value = _get(source, name, spec.kind)
            if value is not None:
                if spec.problem(value) is not None:
                    raise ApiError(400, f"'{where}{name}' must be {spec.rule}", where + name)
                fields[spec.name] = value
                break
    try:
        return SamplingOptions(**{k: v for k, v in fields.items() if v is not None})
    except UsageError as exc:
        raise ApiError(400, str(exc)) from None


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ApiError(400, "'messages' must be a non-empty array", "messages")
    if len(value) > MAX_MESSAGES:
        raise ApiError(400, f"'messages' has more than {MAX_MESSAGES} entries", "messages")
    messages = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"'{where}' must be an object", where)
        role = message.get("role")
        if role not in ROLES:
            raise ApiError(400, f"'{where}.role' must be one of {', '.join(ROLES)}", f"{where}.role")
        entry = {"role": "system" if role == "developer" else role, "content": _content(message.get("content"), where)}
        if role == "user" and message.get("images") is not None:  # Ollama's: base64 images beside the text
            entry["content"] = _with_images(entry["content"], message["images"], f"{where}.images")
        if role == "assistant" and message.get("tool_calls"):
            entry["tool_calls"] = _tool_calls(message["tool_calls"], where)
        if role == "tool" and isinstance(message.get("tool_call_id"), str):
            entry["tool_call_id"] = message["tool_call_id"][:128]
        if role == "tool" and isinstance(name := message.get("name") or message.get("tool_name"), str):
            entry["name"] = name[:64]  # Ollama names the tool (tool_name); some templates show it
        messages.append(entry)
    if not any(m["role"] == "user" and (text_of(m["content"]).strip() or has_images([m])) for m in messages):
        raise ApiError(400, "the messages have no user message with text", "messages")
    return messages


def _tool_calls(value: Any, where: str) -> list[dict]:
    """An assistant turn's earlier calls, for the template to render: arguments as objects, as the
    Hugging Face templates expect (OpenAI sends them as JSON text)."""
    if not isinstance(value, list) or len(value) > 128:
        raise ApiError(400, f"'{where}.tool_calls' must be an array", f"{where}.tool_calls")
    calls = []
    for call in value:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ApiError(400, f"'{where}.tool_calls' entries need function.name", f"{where}.tool_calls")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = safejson.loads(arguments)
            except ValueError:
                raise ApiError(400, f"'{where}.tool_calls': arguments must be JSON", f"{where}.tool_calls") from None
        calls.append({"id": str(call.get("id", ""))[:128], "type": "function",
                      "function": {"name": function["name"][:64], "arguments": arguments}})
    return calls


def _content(value: Any, where: str) -> str | list[dict]:
    """A message's text: a string, or OpenAI's array of parts: text, and images as data: URLs
    (decoded later, off the event loop: localllm.generation.media)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise ApiError(400, f"'{where}.content' must be a string or an array of parts", f"{where}.content")
    parts: list[dict] = []
    for part in value:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise ApiError(400, f"'{where}.content': an image_url part needs image_url.url", f"{where}.content")
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            raise ApiError(400, f"'{where}.content': only text and image_url parts are supported, not "
                                f"{str(kind)[:40]}", f"{where}.content")
    if len(parts) > MAX_PARTS:
        raise ApiError(400, f"'{where}.content' has more than {MAX_PARTS} parts", f"{where}.content")
    return parts if has_images([{"content": parts}]) else "".join(p["text"] for p in parts)


def _with_images(content: str | list, value: Any, where: str) -> str | list[dict]:
    """Ollama's `images` (base64 strings) as image parts after the message's text."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(value) > MAX_PARTS:
        raise ApiError(400, f"'{where}' must be an array of base64 strings", where)
    if not value:
        return content
    parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
    for i, text in enumerate(value):
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"'{where}[{i}]' is not base64", where) from None
        parts.append({"type": "image", "image": data})
    return parts


MAX_N = 16


def _n(body: dict) -> int:
    n = _get(body, "n", int, 1)
    if not 1 <= n <= MAX_N:
        raise ApiError(400, f"'n' must be from 1 to {MAX_N}", "n")
    return n


def _object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _model(body: dict, required: bool) -> str | None:
    model = _get(body, "model", str)
    if required and not model:
        raise ApiError(400, "'model' is required", "model")
    return model or None


def _max_tokens(body: dict, *names: str) -> int | None:
    for name in names:
        value = _get(body, name, int)
        if value is not None:
            if value < 1:
                raise ApiError(400, f"'{name}' must be at least 1", name)
            return value
    return None


# ---- OpenAI requests -----------------------------------------------------------------------
def openai_chat(body: Any) -> GenerationJob:
    body = _object(body)
    _refuse_unsupported(body)
    return GenerationJob(
        n=_n(body),
        model=_model(body, required=True),
        messages=_messages(body.get("messages")),
        sampling=_openai_sampling(body, "max_completion_tokens", "max_tokens", logprobs=chat_logprobs(body)),
        stream=_get(body, "stream", bool, False),
        include_usage=_include_usage(body),
        grammar=_response_format(body),
        **_tools(body),
        **_openai_thinking(body),
    )


def _openai_thinking(body: dict) -> dict:
    """OpenAI's reasoning_effort, and the template switches other servers take in
    chat_template_kwargs (vLLM, llama-server): enable_thinking and reasoning_effort, no others."""
    kwargs = _get(body, "chat_template_kwargs", dict, {})
    unknown = sorted(set(kwargs) - {"enable_thinking", "reasoning_effort"})
    if unknown:
        raise ApiError(400, f"'chat_template_kwargs.{str(unknown[0])[:40]}' is not supported: only enable_thinking "
                            "and reasoning_effort are", "chat_template_kwargs")
    think = _get(kwargs, "enable_thinking", bool)
    effort = _get(body, "reasoning_effort", str) or _get(kwargs, "reasoning_effort", str)
    return {"think": think, "reasoning_effort": _effort(effort, "reasoning_effort")}


def _effort(value: str | None, where: str) -> str | None:
    if value is not None and value not in REASONING_EFFORTS:
        raise ApiError(400, f"'{where}' must be one of {', '.join(REASONING_EFFORTS)}", where)
    return value


def _tools(body: dict) -> dict:
    from ..generation.tools import check_tools

    tools, choice = body.get("tools"), body.get("tool_choice", "auto")
    if tools in (None, []):
        return {}
    try:
        check_tools(tools)
    except UsageError as exc:
        raise ApiError(400, str(exc), "tools") from None
    named = isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict) \
        and isinstance(choice["function"].get("name"), str)
    if choice not in ("auto", "none", "required") and not named:
        raise ApiError(400, "'tool_choice' must be auto, none, required or {\"type\": \"function\", \"function\": "
                            "{\"name\": ...}}", "tool_choice")
    return {"tools": tools, "tool_choice": choice}


def openai_completion(body: Any) -> GenerationJob:
    body = _object(body)
    _refuse_unsupported(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    ids = None
    if isinstance(prompt, list):  # token ids, as OpenAI's API allows
        if not prompt or len(prompt) > MAX_PROMPT_IDS or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt):
            raise ApiError(400, f"'prompt' as tokens must be 1 to {MAX_PROMPT_IDS} non-negative integers", "prompt")
        ids, prompt = prompt, None
    elif not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "'prompt' must be a non-empty string or an array of token ids (one prompt per request)", "prompt")
    return GenerationJob(
        model=_model(body, required=True), prompt=prompt, prompt_tokens=ids, n=_n(body),
        sampling=_openai_sampling(body, "max_tokens", logprobs=_count(body, "logprobs", MAX_LOGPROBS)),
        stream=_get(body, "stream", bool, False),
        include_usage=_include_usage(body), grammar=_response_format(body),
    )


def chat_logprobs(body: dict) -> int | None:
    """Chat's logprobs (true/false) and top_logprobs (alternatives, which need logprobs)."""
    top = _count(body, "top_logprobs", MAX_LOGPROBS)
    if not _get(body, "logprobs", bool, False):
        if top is not None:
            raise ApiError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
        return None
    return top or 0


def _count(body: dict, name: str, most: int) -> int | None:
    value = _get(body, name, int)
    if value is not None and not 0 <= value <= most:
        raise ApiError(400, f"'{name}' must be from 0 to {most}", name)
    return value


def _openai_sampling(body: dict, *max_names: str, logprobs: int | None = None) -> SamplingOptions:
    # OpenAI's own default max_tokens for completions is 16; a local server answering in full
    # is what its users expect, so the answer runs to its end unless told otherwise.
    # top_k, min_p, repeat_penalty and ignore_eos are not OpenAI's; llama-server and vLLM take them too.
    return _sampling(body, "openai", max_tokens=_max_tokens(body, *max_names), stop=_stops(body.get("stop"), "stop"),
                     ignore_eos=_get(body, "ignore_eos", bool), logprobs=logprobs)


def _include_usage(body: dict) -> bool:
    options = _get(body, "stream_options", dict, {})
    return bool(_get(options, "include_usage", bool, False))


def _response_format(body: dict) -> str | None:
    """The grammar OpenAI's response_format asks for: json_object, or json_schema's schema."""
    response_format = _get(body, "response_format", dict)
    kind = None if response_format is None else response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return json_grammar_for(None, "response_format")
    if kind == "json_schema":
        spec = _get(response_format, "json_schema", dict)
        if spec is None or not isinstance(spec.get("schema", {}), dict):
            raise ApiError(400, "'response_format.json_schema.schema' must be an object", "response_format")
        return json_grammar_for(spec.get("schema") or {}, "response_format")
    raise ApiError(400, "'response_format.type' must be text, json_object or json_schema", "response_format")


def json_grammar_for(schema: dict | None, name: str) -> str:
    from ..generation.constraints import json_grammar

    try:
        return json_grammar(schema)
    except UsageError as exc:
        raise ApiError(400, str(exc), name) from None


def _refuse_unsupported(body: dict) -> None:
    """Fields that would change the answer and that this server cannot honour are refused by
    name, never ignored."""
    for name in ("functions", "logit_bias", "echo", "best_of", "suffix"):
        value = body.get(name)
        if value not in (None, False, [], {}):
            raise ApiError(400, f"'{name}' is not supported by this server", name)


MAX_EMBED_INPUTS = 256


@dataclass
class EmbeddingJob:
    model: str
    inputs: list[str]
    base64: bool


def _embed_inputs(body: dict, name: str) -> list[str]:
    value = body.get(name)
    inputs = [value] if isinstance(value, str) else value
    if not isinstance(inputs, list) or not inputs or not all(isinstance(v, str) and v for v in inputs):
        raise ApiError(400, f"'{name}' must be a non-empty string or an array of them (token arrays are not supported)", name)
    if len(inputs) > MAX_EMBED_INPUTS:
        raise ApiError(400, f"'{name}' has more than {MAX_EMBED_INPUTS} entries", name)
    if body.get("dimensions") is not None:
        raise ApiError(400, "'dimensions' is not supported: the model's own size is used", "dimensions")
    return inputs


def embedding_request(body: Any) -> EmbeddingJob:
    body = _object(body)
    inputs = _embed_inputs(body, "input")
    encoding = _get(body, "encoding_format", str, "float")
    if encoding not in ("float", "base64"):
        raise ApiError(400, "'encoding_format' must be 'float' or 'base64'", "encoding_format")
    return EmbeddingJob(_model(body, required=True), inputs, encoding == "base64")
