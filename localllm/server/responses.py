"""OpenAI's Responses API read onto the one GenerationJob, its answers' shapes (the response
object, its output items and the streamed event sequence), and the store that
`previous_response_id` reads.

A stored response keeps the conversation it ended (input items and output, as the one request
path's messages) so the next turn sends only what is new; instructions are not carried over, as
OpenAI's API says. Entries are bounded in number, bytes and idle time.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..events import Finished
from ..generation.media import has_images, text_of
from ..generation.reasoning import LEVELS
from ..options import MAX_LOGPROBS
from . import schemas
from .replies import logprob_entries
from .schemas import ApiError, GenerationJob, _get, _max_tokens, _object, _sampling

MAX_ITEMS = schemas.MAX_MESSAGES
# Encrypted reasoning is asked for by stateless clients; there is none to give (it stays None).
INCLUDABLE = ("reasoning.encrypted_content", "message.output_text.logprobs")
REFUSED = ("background", "conversation", "prompt", "max_tool_calls")


@dataclass
class ResponseSpec:
    """What a Responses request asked for that its response object echoes back."""

    body: dict
    previous: str | None
    store: bool
    id: str = field(default_factory=lambda: f"resp_{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))


def read_request(body: Any, earlier: list[dict] | None) -> tuple[GenerationJob, ResponseSpec, list[dict]]:
    """The job, what the response echoes, and the conversation so far without instructions
    (`earlier`: the stored conversation `previous_response_id` named)."""
    body = _object(body)
    for name in REFUSED:
        if body.get(name) not in (None, False, 0, [], {}):
            raise ApiError(400, f"'{name}' is not supported by this server", name)
    if body.get("truncation") not in (None, "disabled"):
        raise ApiError(400, "'truncation' must be 'disabled': a conversation that does not fit is refused, never cut",
                       "truncation")
    include = _get(body, "include", list, [])
    if any(item not in INCLUDABLE for item in include):
        raise ApiError(400, f"'include' may only name {', '.join(INCLUDABLE)}", "include")
    conversation = list(earlier or []) + _items(body.get("input"))
    if len(conversation) > MAX_ITEMS:
        raise ApiError(400, f"the conversation has more than {MAX_ITEMS} items", "input")
    if not any(m["role"] == "user" and (text_of(m["content"]).strip() or has_images([m])) for m in conversation):
        raise ApiError(400, "the input has no user message with text", "input")
    instructions = _get(body, "instructions", str)
    messages = ([{"role": "system", "content": instructions}] if instructions else []) + conversation
    reasoning = _get(body, "reasoning", dict, {})
    level = _get(reasoning, "effort", str)
    if level is not None and level not in LEVELS:
        raise ApiError(400, f"'reasoning.effort' must be one of {', '.join(LEVELS)}", "reasoning.effort")
    top = schemas._count(body, "top_logprobs", MAX_LOGPROBS)
    scoring = "message.output_text.logprobs" in include or top is not None
    job = GenerationJob(
        model=schemas._model(body, required=True), messages=messages,
        sampling=_sampling(body, "openai", max_tokens=_max_tokens(body, "max_output_tokens"),
                           logprobs=(top or 0) if scoring else None),
        stream=_get(body, "stream", bool, False), grammar=_text_format(body), reasoning_level=level,
        **schemas._tools(_chat_tools(body)))
    spec = ResponseSpec(body, _get(body, "previous_response_id", str), _get(body, "store", bool, True))
    return job, spec, conversation


def _items(value: Any) -> list[dict]:
    """Input items as the request path's messages: text messages, earlier function calls (on
    one assistant turn) and their outputs; earlier reasoning is left out, as templates do."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise ApiError(400, "'input' must be a string or a non-empty array of items", "input")
    if len(value) > MAX_ITEMS:
        raise ApiError(400, f"'input' has more than {MAX_ITEMS} items", "input")
    messages: list[dict] = []
    names: dict[str, str] = {}
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise ApiError(400, f"'{where}' must be an object", where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise ApiError(400, f"'{where}.role' must be user, assistant, system or developer", f"{where}.role")
            messages.append({"role": "system" if role == "developer" else role,
                             "content": _text(item.get("content"), where, images=role == "user")})
        elif kind == "function_call":
            call = schemas._tool_calls([{"id": item.get("call_id"), "function": {
                "name": item.get("name"), "arguments": item.get("arguments", "{}")}}], where)[0]
            names[call["id"]] = call["function"]["name"]
            last = messages[-1] if messages else None
            if last is None or last["role"] != "assistant":  # calls after a message are that turn's
                last = {"role": "assistant", "content": ""}
                messages.append(last)
            last.setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            call_id = _get(item, "call_id", str, "")[:128]
            message = {"role": "tool", "tool_call_id": call_id, "content": _text(item.get("output"), where)}
            if call_id in names:
                message["name"] = names[call_id]
            messages.append(message)
        elif kind != "reasoning":
            raise ApiError(400, f"'{where}.type' {str(kind)[:40]!r} is not supported: only messages, function_call, "
                                "function_call_output and reasoning items are", f"{where}.type")
    return messages


def _text(value: Any, where: str, images: bool = False) -> str | list[dict]:
    """A message's text, or (`images`: a user's) its parts as Chat Completions' parts, which
    schemas._content checks and joins."""
    if not isinstance(value, (str, list)):
        raise ApiError(400, f"'{where}.content' must be a string or an array of text parts", f"{where}.content")
    if isinstance(value, str):
        return value
    parts: list[dict] = []
    for part in value:
        kind = part.get("type") if isinstance(part, dict) else None
        text = part.get("text", part.get("refusal")) if isinstance(part, dict) else None
        if kind == "input_image" and images and isinstance(part.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        elif kind in ("input_text", "output_text", "text", "refusal") and isinstance(text, str):
            parts.append({"type": "text", "text": text})
        else:
            raise ApiError(400, f"'{where}.content': only text{' and input_image (image_url)' if images else ''} parts "
                                f"are supported, not {str(kind)[:40]}", f"{where}.content")
    return schemas._content(parts, where)


def _chat_tools(body: dict) -> dict:
    """Function tools and tool_choice in Chat Completions' form, which the request path takes."""
    tools = _get(body, "tools", list, [])
    converted = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise ApiError(400, f"'tools[{i}]': only function tools are supported, not {str(kind)[:40]}", "tools")
        converted.append({"type": "function", "function": {
            k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}})
    choice = body.get("tool_choice", "auto")
    if isinstance(choice, dict) and choice.get("type") == "function":
        choice = {"type": "function", "function": {"name": choice.get("name")}}
    return {"tools": converted, "tool_choice": choice}


def _text_format(body: dict) -> str | None:
    text = _get(body, "text", dict, {})
    fmt = _get(text, "format", dict, {"type": "text"})
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return schemas.json_grammar_for(None, "text.format")
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise ApiError(400, "'text.format.schema' must be an object", "text.format")
        return schemas.json_grammar_for(fmt["schema"], "text.format")
    raise ApiError(400, "'text.format.type' must be text, json_object or json_schema", "text.format")


# ---- answers ------------------------------------------------------------------------------
def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class Output:
    """A response's output items as the answer arrives, and the Responses events that tell a
    streaming client each step: reasoning, then the message, then function calls."""

    def __init__(self, spec: ResponseSpec, model: str):
        self.spec, self.model = spec, model
        self.items: list[dict] = []
        self.sequence = 0
        self.open: dict | None = None

    def event(self, kind: str, **fields) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()

    def response(self, status: str = "in_progress", finished: Finished | None = None, error: dict | None = None,
                 reasoning_tokens: int = 0) -> dict:
        body = self.spec.body
        return {
            "id": self.spec.id, "object": "response", "created_at": self.spec.created, "status": status,
            "error": error, "model": self.model, "output": self.items if status != "in_progress" else [],
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "metadata": body.get("metadata") or {}, "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": self.spec.previous, "store": self.spec.store,
            "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"), "summary": (body.get("reasoning") or {}).get("summary")},
            "temperature": body.get("temperature"), "top_p": body.get("top_p"), "tools": body.get("tools") or [],
            "tool_choice": body.get("tool_choice", "auto"), "text": body.get("text") or {"format": {"type": "text"}},
            "truncation": "disabled", "usage": _usage(finished, reasoning_tokens) if finished is not None else None,
        }

    def start(self) -> bytes:
        created = self.response()
        return self.event("response.created", response=created) + self.event("response.in_progress", response=created)

    def reasoning(self, text: str) -> bytes:
        out = b""
        if self.open is None or self.open["type"] != "reasoning":
            out += self.close()
            self.open = {"type": "reasoning", "id": _id("rs"), "summary": [], "content": [], "encrypted_content": None,
                         "status": "in_progress", "_text": ""}
            out += self.event("response.output_item.added", output_index=len(self.items), item=self._public(self.open))
            out += self.event("response.reasoning_summary_part.added", item_id=self.open["id"], output_index=len(self.items),
                              summary_index=0, part={"type": "summary_text", "text": ""})
        self.open["_text"] += text
        return out + self.event("response.reasoning_summary_text.delta", item_id=self.open["id"],
                                output_index=len(self.items), summary_index=0, delta=text)

    def text(self, text: str, scores=()) -> bytes:
        out = b""
        if self.open is None or self.open["type"] != "message":
            out += self.close()
            self.open = {"type": "message", "id": _id("msg"), "status": "in_progress", "role": "assistant",
                         "content": [], "_text": ""}
            out += self.event("response.output_item.added", output_index=len(self.items), item=self._public(self.open))
            out += self.event("response.content_part.added", item_id=self.open["id"], output_index=len(self.items),
                              content_index=0, part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
            self.open["_scores"] = []
        self.open["_text"] += text
        entries = logprob_entries(scores)
        self.open["_scores"] += entries
        return out + self.event("response.output_text.delta", item_id=self.open["id"], output_index=len(self.items),
                                content_index=0, delta=text, logprobs=entries)

    def calls(self, calls) -> bytes:
        out = self.close()
        for call in calls:
            arguments = json.dumps(call.arguments)
            item = {"type": "function_call", "id": _id("fc"), "call_id": call.id, "name": call.name,
                    "arguments": "", "status": "in_progress"}
            index = len(self.items)
            out += self.event("response.output_item.added", output_index=index, item=dict(item))
            out += self.event("response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=arguments)
            out += self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                              name=call.name, arguments=arguments)
            item.update(arguments=arguments, status="completed")
            self.items.append(item)
            out += self.event("response.output_item.done", output_index=index, item=item)
        return out

    def close(self) -> bytes:
        """Ends the item being written, with its done events."""
        item, self.open = self.open, None
        if item is None:
            return b""
        index, text = len(self.items), item.pop("_text")
        item["status"] = "completed"
        if item["type"] == "reasoning":
            item["summary"] = [{"type": "summary_text", "text": text}]
            item["content"] = [{"type": "reasoning_text", "text": text}]
            part = item["summary"][0]
            out = self.event("response.reasoning_summary_text.done", item_id=item["id"], output_index=index,
                             summary_index=0, text=text)
            out += self.event("response.reasoning_summary_part.done", item_id=item["id"], output_index=index,
                              summary_index=0, part=part)
        else:
            scores = item.pop("_scores")
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": scores}
            item["content"] = [part]
            out = self.event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                             text=text, logprobs=scores)
            out += self.event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                              part=part)
        self.items.append(item)
        return out + self.event("response.output_item.done", output_index=index, item=item)

    def finish(self, finished: Finished, reasoning_tokens: int = 0) -> tuple[dict, bytes]:
        """The whole response, and the events that end the stream."""
        out = self.close()
        if not any(item["type"] in ("message", "function_call") for item in self.items):
            out += self.text("") + self.close()  # an empty answer is still a message
        status = "incomplete" if finished.reason == "length" else "completed"
        response = self.response(status, finished, reasoning_tokens=reasoning_tokens)
        return response, out + self.event(f"response.{status}", response=response)

    def failed(self, error: ApiError) -> bytes:
        return self.event("response.failed", response=self.response(
            "failed", error={"code": error.code or error.kind, "message": error.message}))

    @staticmethod
    def _public(item: dict) -> dict:  # without the text gathered so far
        return {k: v for k, v in item.items() if not k.startswith("_")}


def _usage(finished: Finished, reasoning_tokens: int) -> dict:
    u = finished.usage
    return {"input_tokens": u.prompt_tokens, "input_tokens_details": {"cached_tokens": u.cached_tokens},
            "output_tokens": u.completion_tokens, "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": u.prompt_tokens + u.completion_tokens}


def conversation_after(conversation: list[dict], items: list[dict]) -> list[dict]:
    """The conversation with a response's output appended, as the next turn's history."""
    text = "".join(part["text"] for item in items if item["type"] == "message" for part in item["content"])
    calls = [{"id": item["call_id"], "type": "function", "function": {"name": item["name"],
                                                                      "arguments": json.loads(item["arguments"])}}
             for item in items if item["type"] == "function_call"]
    return conversation + [{"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})}]


# ---- the store ------------------------------------------------------------------------------
class ResponseStore:
    """Stored responses and their conversations, least recently used first out: at most
    `max_entries` and `max_bytes` (their JSON), each kept `ttl_s` after it was last used."""

    def __init__(self, max_entries: int = 1024, max_bytes: int = 64 * 2**20, ttl_s: float = 3600.0):
        self.max_entries, self.max_bytes, self.ttl_s = max_entries, max_bytes, ttl_s
        self._entries: OrderedDict[str, tuple[float, int, dict, list[dict]]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, response: dict, conversation: list[dict]) -> None:
        size = len(json.dumps(response)) + len(json.dumps(conversation))
        if size > self.max_bytes:
            return
        with self._lock:
            self._drop(response["id"])
            self._entries[response["id"]] = (time.monotonic(), size, response, conversation)
            self._bytes += size
            self._expire()
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))

    def get(self, response_id: str) -> tuple[dict, list[dict]] | None:
        with self._lock:
            self._expire()
            entry = self._entries.get(response_id)
            if entry is None:
                return None
            self._entries[response_id] = (time.monotonic(), *entry[1:])
            self._entries.move_to_end(response_id)
            return entry[2], entry[3]

    def delete(self, response_id: str) -> bool:
        with self._lock:
            return self._drop(response_id)

    def _drop(self, response_id: str) -> bool:
        entry = self._entries.pop(response_id, None)
        if entry is not None:
            self._bytes -= entry[1]
        return entry is not None

    def _expire(self) -> None:
        now = time.monotonic()
        while self._entries:
            oldest = next(iter(self._entries))
            if now - self._entries[oldest][0] < self.ttl_s:
                return
            self._drop(oldest)
