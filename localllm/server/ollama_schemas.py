"""Ollama's requests read onto the one GenerationJob (schemas.py has the shared checks and
OpenAI's)."""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from ..options import REASONING_EFFORTS, SamplingOptions
from .schemas import (
    ApiError,
    EmbeddingJob,
    GenerationJob,
    _effort,
    _embed_inputs,
    _get,
    _messages,
    _model,
    _object,
    _sampling,
    _stops,
    _tools,
    _with_images,
    chat_logprobs,
    json_grammar_for,
)


def ollama_chat(body: Any) -> GenerationJob:
    body = _object(body)
    tools = body.get("tools")  # Ollama has no tool_choice: the model decides
    return GenerationJob(model=_model(body, required=True), messages=_messages(body.get("messages")),
                         sampling=_ollama_sampling(body), stream=_get(body, "stream", bool, True),
                         grammar=_ollama_format(body), keep_alive=ollama_keep_alive(body),
                         **_tools({"tools": tools} if tools else {}), **_ollama_think(body))


def ollama_generate(body: Any) -> tuple[GenerationJob, bool]:
    """The job, and whether it is a raw prompt. An empty prompt only loads the model (Ollama's way)."""
    body = _object(body)
    _ollama_refuse(body)
    prompt = _get(body, "prompt", str, "")
    system = _get(body, "system", str)
    raw = _get(body, "raw", bool, False)
    job = GenerationJob(model=_model(body, required=True), sampling=_ollama_sampling(body),
                        stream=_get(body, "stream", bool, True), grammar=_ollama_format(body),
                        keep_alive=ollama_keep_alive(body), **_ollama_think(body))
    if raw:
        if job.think is not None or job.reasoning_effort is not None:
            raise ApiError(400, "'think' works through the chat template, which 'raw' leaves out", "think")
        job.prompt = prompt
    elif prompt:
        job.messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": _with_images(prompt, body.get("images") or [], "images")}]
    elif body.get("images"):
        raise ApiError(400, "'images' need a prompt", "prompt")
    return job, raw


def _ollama_sampling(body: dict) -> SamplingOptions:
    options = _get(body, "options", dict, {})
    num_predict = _get(options, "num_predict", int)  # negative: no limit; 0 is taken as 1
    limit = None if num_predict is None or num_predict < 0 else max(num_predict, 1)
    return _sampling(options, "ollama", "options.", max_tokens=limit, stop=_stops(options.get("stop"), "options.stop"),
                     logprobs=chat_logprobs(body))  # Ollama's logprobs and top_logprobs sit beside its options


def ollama_keep_alive(body: dict) -> float | None | str:
    """Ollama's keep_alive: a duration ("5m") or seconds; 0 unloads after the answer, negative never."""
    from ..options import parse_duration

    value = body.get("keep_alive")
    if value is None:
        return "unchanged"
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ApiError(400, "'keep_alive' must be a duration such as \"5m\" or a number of seconds", "keep_alive")
    try:
        return parse_duration(str(value), "keep_alive")
    except UsageError as exc:
        raise ApiError(400, str(exc), "keep_alive") from None


def _ollama_format(body: dict) -> str | None:
    """Ollama's format: "json" (any JSON object) or a JSON Schema."""
    value = body.get("format")
    if value in (None, ""):
        return None
    if value == "json":
        return json_grammar_for(None, "format")
    if isinstance(value, dict):
        return json_grammar_for(value, "format")
    raise ApiError(400, "'format' must be \"json\" or a JSON Schema object", "format")


def _ollama_refuse(body: dict) -> None:
    if body.get("images") and body.get("raw"):
        raise ApiError(400, "'images' go through the chat template, which 'raw' leaves out", "images")
    if body.get("tools"):
        raise ApiError(400, "'tools' is not supported by /api/generate (use /api/chat)", "tools")


def _ollama_think(body: dict) -> dict:
    """Ollama's think: true or false, or for gpt-oss "low", "medium" or "high"."""
    value = body.get("think")
    if value is None or isinstance(value, bool):
        return {"think": value}
    if isinstance(value, str):
        return {"reasoning_effort": _effort(value, "think")}
    raise ApiError(400, f"'think' must be true, false or one of {', '.join(REASONING_EFFORTS)}", "think")


def ollama_name(body: Any, field: str) -> str:
    """A model name field of Ollama's model-management routes ("name" too, as older clients send)."""
    body = _object(body)
    value = body.get(field) or (body.get("name") if field == "model" else None)
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"'{field}' must name a model", field)
    return value


def ollama_embed(body: Any, legacy: bool) -> tuple[EmbeddingJob, float | None | str]:
    """Ollama's /api/embed ("input": a string or strings), or its older /api/embeddings ("prompt":
    one string); and the request's keep_alive. An input longer than the context is refused, not cut
    ("truncate" cannot change that)."""
    body = _object(body)
    if legacy and not isinstance(body.get("prompt"), str):
        raise ApiError(400, "'prompt' must be a string", "prompt")
    if body.get("truncate") not in (None, True, False):
        raise ApiError(400, "'truncate' must be true or false", "truncate")
    return EmbeddingJob(_model(body, required=True), _embed_inputs(body, "prompt" if legacy else "input"), False), \
        ollama_keep_alive(body)
