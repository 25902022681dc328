"""Tool calls: tools rendered by the model's own chat template, and its reply parsed back into
structured calls, for the template families the catalog ships.

- ``hermes`` (Qwen3, Qwen2.5, Hermes): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
- ``llama3`` (Llama 3.1-3.3): the reply is one JSON object ``{"name": ..., "parameters": {...}}``
- ``mistral``: ``[TOOL_CALLS]`` (a special token, so not in the detokenized text) then a JSON list
  of ``{"name": ..., "arguments": {...}}``
- ``gpt-oss``: a message to ``functions.NAME`` with the JSON arguments (localllm.generation.harmony), taken
  apart from the text as it streams

With ``tool_choice`` requiring a call, the reply is constrained by a grammar built from the tools'
parameter schemas, so it always parses and its arguments validate.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .. import safejson
from ..errors import UsageError

MAX_TOOLS = 128
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict
    id: str = field(default_factory=lambda: f"call_{secrets.token_hex(8)}")


def family(template: str | None) -> str | None:
    if not template:
        return None
    if "<tool_call>" in template:
        return "hermes"
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<|channel|>" in template:
        return "gpt-oss"
    if "<|start_header_id|>" in template and "tools" in template:
        return "llama3"
    return None


def check_tools(tools: list) -> dict[str, dict]:
    """OpenAI-style tools ({"type": "function", "function": {name, description, parameters}}) -> name: parameters."""
    if not isinstance(tools, list) or not 0 < len(tools) <= MAX_TOOLS:
        raise UsageError(f"tools must be a list of 1 to {MAX_TOOLS} functions")
    found = {}
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not _NAME.match(name):
            raise UsageError("each tool needs {\"type\": \"function\", \"function\": {\"name\": ...}} with a name of "
                             "letters, digits and _.- (at most 64)")
        parameters = function.get("parameters", {"type": "object"})
        if not isinstance(parameters, dict):
            raise UsageError(f"tool {name}: parameters must be a JSON Schema object")
        if name in found:
            raise UsageError(f"tool {name} is given twice")
        found[name] = parameters
    return found


def for_template(tools: list) -> list:
    """Checked tools as templates expect them: some (gpt-oss's) read every function's description
    and parameters' properties, which OpenAI's format lets a caller leave out."""
    out = []
    for tool in tools:
        function = {"description": "", **tool["function"]}
        function["parameters"] = {"type": "object", "properties": {}, **function.get("parameters", {})}
        out.append({**tool, "type": "function", "function": function})
    return out


def _call_schema(name: str, parameters: dict, arguments_key: str) -> dict:
    return {"type": "object", "properties": {"name": {"const": name}, arguments_key: parameters},
            "required": ["name", arguments_key], "additionalProperties": False}


def _lark_literal(text: str, special: Callable[[str], int | None] | None) -> str:
    """`text` in a Lark grammar: by id where it is one special token (Qwen's `<tool_call>` is
    151657), which no spelling matches: the grammar would forbid the very token the model writes,
    and its fast-forward would hand that token over only to have the matcher reject it."""
    token = special(text) if special is not None else None
    return f"<[{token}]>" if token is not None else json.dumps(text)


def required_grammar(kind: str, tools: dict[str, dict], only: str | None = None,
                     special: Callable[[str], int | None] | None = None) -> str:
    """An llguidance grammar for a reply that is a call of one of the tools (or of `only`).
    `special`: the model's lookup of text that is one special token (Model.special_token)."""
    import llguidance

    from .constraints import enforceable

    if only is not None and only not in tools:
        raise UsageError(f"tool_choice names {only}, which is not among the tools")
    names = [only] if only else list(tools)
    if kind == "gpt-oss":
        from .harmony import call_grammar

        return call_grammar({n: tools[n] for n in names})
    key = "parameters" if kind == "llama3" else "arguments"
    one = {"anyOf": [_call_schema(n, tools[n], key) for n in names]}
    if kind == "hermes":
        opening, closing = _lark_literal("<tool_call>", special), _lark_literal("</tool_call>", special)
        lark = f'start: {opening} "\\n" call "\\n" {closing}\ncall: %json ' + json.dumps(one)
    elif kind == "llama3":
        lark = "start: call\ncall: %json " + json.dumps(one)
    elif kind == "mistral":
        lark = "start: calls\ncalls: %json " + json.dumps({"type": "array", "items": one, "minItems": 1})
    else:
        raise UsageError(f"tool calls are not supported for this model's chat template ({kind or 'no tools in it'})")
    return enforceable(llguidance.LLMatcher.grammar_from_lark(lark), "a tool's parameters")


def plan_calls(template: str | None, tools: list | None, tool_choice, constrained: bool,
               special: Callable[[str], int | None] | None = None) -> tuple[str | None, dict, str | None]:
    """For a request with tools: (the template's family, the checked tools, the grammar a required
    call needs or None); (None, {}, None) when no tools are to be offered. `constrained`: the request
    already has a schema or grammar. `special`: as for required_grammar."""
    if not tools or tool_choice == "none":
        return None, {}, None
    params = check_tools(tools)
    kind = family(template)
    if kind is None:
        raise UsageError("tool calls are not supported for this model's chat template (it renders no tools)")
    if tool_choice == "auto":
        return kind, params, None
    if tool_choice != "required" and not isinstance(tool_choice, dict):
        raise UsageError(f"tool_choice must be auto, none, required or a function, not {str(tool_choice)[:60]}")
    if constrained:
        raise UsageError("a required tool call is already constrained: give no schema or grammar with it")
    only = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, dict) else None
    return kind, params, required_grammar(kind, params, only, special)


def parse(kind: str, text: str, tools: dict[str, dict], messages: Sequence[tuple[str, str]] = ()) -> tuple[str, list[ToolCall]]:
    """(the reply's text without its calls, the calls to known tools). `messages`: gpt-oss's calls
    as (function name, argument text), which its splitter took out of the text."""
    if kind == "gpt-oss":
        calls = [c for name, arguments in messages
                 if (c := _call(json.dumps({"name": name, "arguments": arguments.strip()}), tools, "arguments"))]
        return text, calls
    if kind == "hermes":
        calls = [c for blob in _HERMES.findall(text) if (c := _call(blob, tools, "arguments"))]
        if calls:
            return _HERMES.sub("", text).strip(), calls
        return _loose_calls(text, tools)
    stripped = text.strip().removeprefix("<|python_tag|>").removeprefix("[TOOL_CALLS]").strip()
    if kind == "llama3":
        call = _call(stripped, tools, "parameters") or _call(stripped, tools, "arguments")
        return ("", [call]) if call else (text, [])
    if kind == "mistral":
        try:
            items = safejson.loads(stripped)
        except ValueError:
            return text, []
        calls = [c for item in (items if isinstance(items, list) else []) if (c := _call(json.dumps(item), tools, "arguments"))]
        return ("", calls) if calls else (text, [])
    return text, []


def _loose_calls(text: str, tools: dict[str, dict]) -> tuple[str, list[ToolCall]]:
    """Calls a Hermes-family model wrote without its tags, as Qwen2.5-Coder does: the whole reply
    one JSON call (or a list of them), or fenced ```json blocks that each hold one. Only objects
    naming an offered tool, with object arguments, count; anything else stays text."""
    whole = _calls_in(text.strip(), tools)
    if whole:
        return "", whole
    calls, kept = [], []
    for i, piece in enumerate(_FENCE.split(text)):  # odd pieces are the fenced blocks
        found = _calls_in(piece, tools) if i % 2 else []
        calls.extend(found)
        if not found:
            kept.append(piece)
    return ("".join(kept).strip(), calls) if calls else (text, [])


def _calls_in(blob: str, tools: dict[str, dict]) -> list[ToolCall]:
    body = _FENCED.fullmatch(blob.strip())
    blob = body.group(1) if body else blob
    try:
        data = safejson.loads(blob)
    except ValueError:
        return []
    items = data if isinstance(data, list) else [data]
    calls = [c for item in items if (c := _call(json.dumps(item), tools, "arguments") or _call(json.dumps(item), tools, "parameters"))]
    return calls if len(calls) == len(items) else []


_FENCED = re.compile(r"```(?:json)?\s*\n(.*?)\n?\s*```", re.DOTALL)
_FENCE = re.compile(r"(```(?:json)?\s*\n.*?\n?\s*```)", re.DOTALL)


def _call(blob: str, tools: dict[str, dict], key: str) -> ToolCall | None:
    try:
        data = safejson.loads(blob)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("name") not in tools:
        return None
    arguments = data.get(key, {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = safejson.loads(arguments)
        except ValueError:
            return None
    return ToolCall(data["name"], arguments) if isinstance(arguments, dict) else None
