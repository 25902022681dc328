"""Anthropic's Messages API read onto the one GenerationJob, and its answers' shapes: the message
object, its content blocks (thinking, text, tool_use) and the streamed event sequence."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from typing import Any

from ..events import Finished
from ..generation.media import has_images, text_of
from . import schemas
from .schemas import ApiError, GenerationJob, _get, _object, _sampling, _stops

REFUSED = ("container", "mcp_servers", "context_management")
# Anthropic's budgets run from 1,024 tokens up; localllm's templates know levels, not budgets.
BUDGET_LEVELS = ((4096, "low"), (16384, "medium"))
EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "xhigh"}  # output_config's


def read_request(body: Any, counting: bool = False) -> GenerationJob:
    """A /v1/messages body (`counting`: /v1/messages/count_tokens', which has no max_tokens)."""
    body = _object(body)
    for name in REFUSED:
        if body.get(name) not in (None, [], {}):
            raise ApiError(400, f"'{name}' is not supported by this server", name)
    max_tokens = _get(body, "max_tokens", int)
    if not counting and (max_tokens is None or max_tokens < 1):
        raise ApiError(400, "'max_tokens' is required: a positive integer", "max_tokens")
    sampling = _sampling({k: body[k] for k in ("temperature", "top_p", "top_k") if k in body}, "openai",
                         max_tokens=max_tokens, stop=_stops(body.get("stop_sequences"), "stop_sequences"))
    output = _get(body, "output_config", dict, {})
    effort = _get(output, "effort", str)
    if effort is not None and effort not in EFFORTS:
        raise ApiError(400, f"'output_config.effort' must be one of {', '.join(EFFORTS)}", "output_config.effort")
    return GenerationJob(model=schemas._model(body, required=True), messages=_messages(body), sampling=sampling,
                         stream=_get(body, "stream", bool, False), grammar=_format(output),
                         reasoning_level=_thinking(body) or EFFORTS.get(effort), **_tools(body))


def _format(output: dict) -> str | None:
    """Structured outputs: output_config.format's JSON schema binds the answer."""
    fmt = _get(output, "format", dict)
    if fmt is None:
        return None
    if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise ApiError(400, "'output_config.format' must be {\"type\": \"json_schema\", \"schema\": {...}}",
                       "output_config.format")
    return schemas.json_grammar_for(fmt["schema"], "output_config.format")


def _messages(body: dict) -> list[dict]:
    system = body.get("system")
    messages = [{"role": "system", "content": _text(system, "system")}] if system not in (None, "", []) else []
    value = body.get("messages")
    if not isinstance(value, list) or not value:
        raise ApiError(400, "'messages' must be a non-empty array", "messages")
    if len(value) > schemas.MAX_MESSAGES:
        raise ApiError(400, f"'messages' has more than {schemas.MAX_MESSAGES} entries", "messages")
    names: dict[str, str] = {}
    for i, message in enumerate(value):
        where = f"messages.{i}"
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise ApiError(400, f"'{where}.role' must be user or assistant", f"{where}.role")
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            raise ApiError(400, f"'{where}.content' must be a string or an array of content blocks", f"{where}.content")
        text, calls, results, images = [], [], 0, []
        for j, block in enumerate(blocks):
            kind = block.get("type") if isinstance(block, dict) else None
            at = f"{where}.content.{j}"
            if kind == "text" and isinstance(block.get("text"), str):
                text.append(block["text"])
            elif kind == "image" and message["role"] == "user":
                images.append(_image(block, at))
            elif kind == "tool_use" and message["role"] == "assistant":
                call = schemas._tool_calls([{"id": block.get("id"), "function": {
                    "name": block.get("name"), "arguments": block.get("input", {})}}], at)[0]
                names[call["id"]] = call["function"]["name"]
                calls.append(call)
            elif kind == "tool_result" and message["role"] == "user":
                call_id = _get(block, "tool_use_id", str, "")[:128]
                result = _text(block.get("content", ""), f"{at}.content")
                if block.get("is_error"):
                    result = f"Error: {result}"
                messages.append({"role": "tool", "tool_call_id": call_id, "content": result,
                                 **({"name": names[call_id]} if call_id in names else {})})
                results += 1
            elif kind not in ("thinking", "redacted_thinking") or message["role"] != "assistant":
                raise ApiError(400, f"'{at}': a {str(kind)[:40]} block is not supported here (text, tool_use in an "
                                    "assistant turn, tool_result in a user turn)", at)
        if text or calls or images or not results:  # a turn of tool results only is those results
            content = images + [{"type": "text", "text": "".join(text)}] if images else "".join(text)
            messages.append({"role": message["role"], "content": content, **({"tool_calls": calls} if calls else {})})
    if not any(m["role"] == "user" and (text_of(m["content"]).strip() or has_images([m])) for m in messages):
        raise ApiError(400, "the messages have no user message with text", "messages")
    return messages


def _image(block: dict, where: str) -> dict:
    """An image block: base64 data (decoded into the image's bytes) or a URL (fetched only where
    the server allows it: serve --allow-image-urls)."""
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        try:
            return {"type": "image", "image": base64.b64decode(source["data"], validate=True)}
        except (binascii.Error, ValueError):
            raise ApiError(400, f"'{where}.source.data' is not base64", where) from None
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise ApiError(400, f"'{where}.source' must be base64 data or a url", where)


def _text(value: Any, where: str) -> str:
    """A string, or an array of text blocks (system prompts, tool results)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
                                       for b in value):
        return "".join(b["text"] for b in value)
    raise ApiError(400, f"'{where}' must be a string or an array of text blocks", where)


def _tools(body: dict) -> dict:
    tools = _get(body, "tools", list, [])
    converted = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type", "custom") != "custom":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise ApiError(400, f"'tools.{i}': server tools ({str(kind)[:40]}) are not supported: only custom tools "
                                "with an input_schema", f"tools.{i}")
        converted.append({"type": "function", "function": {
            "name": tool.get("name"), "description": tool.get("description", ""), "parameters": tool.get("input_schema")}})
    choice = _get(body, "tool_choice", dict, {"type": "auto"})
    kind = choice.get("type")
    if kind == "tool":
        mapped: Any = {"type": "function", "function": {"name": choice.get("name")}}
    elif kind in ("auto", "any", "none"):
        mapped = {"any": "required"}.get(kind, kind)
    else:
        raise ApiError(400, "'tool_choice.type' must be auto, any, tool or none", "tool_choice")
    if not converted:
        return {}
    return schemas._tools({"tools": converted, "tool_choice": mapped})


def _thinking(body: dict) -> str | None:
    thinking = _get(body, "thinking", dict)
    if thinking is None:
        return None
    kind = thinking.get("type")
    if kind == "disabled":
        return "none"
    if kind == "adaptive":
        return "medium"
    budget = _get(thinking, "budget_tokens", int)
    if kind != "enabled" or budget is None or budget < 1:
        raise ApiError(400, "'thinking' must be {\"type\": \"enabled\", \"budget_tokens\": N}, adaptive or disabled",
                       "thinking")
    return next((level for limit, level in BUDGET_LEVELS if budget <= limit), "high")


# ---- answers ------------------------------------------------------------------------------
def stop_reason(finished: Finished) -> str:
    if finished.reason == "length":
        return "max_tokens"
    if finished.reason == "tool_calls":
        return "tool_use"
    return "stop_sequence" if finished.stop_sequence is not None else "end_turn"


def usage(finished: Finished | None, prompt_tokens: int) -> dict:
    """Anthropic counts prompt tokens read from the cache apart from the input tokens."""
    cached = finished.usage.cached_tokens if finished is not None else 0
    total = finished.usage.prompt_tokens if finished is not None else prompt_tokens
    return {"input_tokens": total - cached, "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached,
            "output_tokens": finished.usage.completion_tokens if finished is not None else 0}


class Message:
    """A message's content blocks as the answer arrives, and the events that tell a streaming
    client each step."""

    def __init__(self, model: str, prompt_tokens: int):
        self.id, self.model, self.prompt_tokens = f"msg_{uuid.uuid4().hex[:24]}", model, prompt_tokens
        self.blocks: list[dict] = []
        self.open: str | None = None  # the kind of the last block while more may come

    @staticmethod
    def event(kind: str, **fields) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()

    def message(self, finished: Finished | None = None) -> dict:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": self.blocks if finished is not None else [],
                "stop_reason": stop_reason(finished) if finished is not None else None,
                "stop_sequence": finished.stop_sequence if finished is not None else None,
                "usage": usage(finished, self.prompt_tokens)}

    def start(self) -> bytes:
        return self.event("message_start", message=self.message()) + self.event("ping")

    def thinking(self, text: str) -> bytes:
        return self._delta("thinking", {"type": "thinking", "thinking": "", "signature": ""}, "thinking", text)

    def text(self, text: str) -> bytes:
        return self._delta("text", {"type": "text", "text": ""}, "text", text)

    def _delta(self, kind: str, empty: dict, key: str, text: str) -> bytes:
        out = b""
        if self.open != kind:
            out += self.close()
            self.blocks.append(empty)
            self.open = kind
            out += self.event("content_block_start", index=len(self.blocks) - 1, content_block=empty.copy())
        self.blocks[-1][key] += text
        return out + self.event("content_block_delta", index=len(self.blocks) - 1, delta={"type": f"{kind}_delta", key: text})

    def calls(self, calls) -> bytes:
        out = self.close()
        for call in calls:
            index = len(self.blocks)
            self.blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments})
            out += self.event("content_block_start", index=index, content_block={
                "type": "tool_use", "id": call.id, "name": call.name, "input": {}})
            out += self.event("content_block_delta", index=index,
                              delta={"type": "input_json_delta", "partial_json": json.dumps(call.arguments)})
            out += self.event("content_block_stop", index=index)
        return out

    def close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return self.event("content_block_stop", index=len(self.blocks) - 1)

    def finish(self, finished: Finished) -> tuple[dict, bytes]:
        whole = self.message(finished)
        out = self.close() + self.event("message_delta", delta={"stop_reason": whole["stop_reason"],
                                                                "stop_sequence": whole["stop_sequence"]},
                                        usage=whole["usage"])
        return whole, out + self.event("message_stop")
