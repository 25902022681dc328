"""The answers' shapes: OpenAI's chat and completion responses, stream chunks and usage, and
Ollama's NDJSON lines, from one GenerationJob and its events."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from ..events import Finished
from .schemas import GenerationJob


def usage(finished: Finished) -> dict:
    u = finished.usage
    # OpenAI's names for a predicted output's tokens fit speculation's drafts: accepted ones cost
    # no step of their own, rejected ones were evaluated and thrown away.
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
            "completion_tokens_details": {"accepted_prediction_tokens": u.accepted_tokens,
                                          "rejected_prediction_tokens": u.drafted_tokens - u.accepted_tokens}}


def timings(finished: Finished) -> dict:
    """llama-server's `timings` object: what its clients and dashboards read."""
    u, t = finished.usage, finished.timings
    return {"cache_n": u.cached_tokens, "prompt_n": u.prompt_tokens - u.cached_tokens, "prompt_ms": t.prompt_s * 1000,
            "prompt_per_second": t.prompt_tokens_per_s, "predicted_n": u.completion_tokens,
            "predicted_ms": t.generation_s * 1000, "predicted_per_second": t.generation_tokens_per_s,
            "draft_n": u.drafted_tokens, "draft_n_accepted": u.accepted_tokens}


def finish_reason(finished: Finished) -> str:
    return finished.reason if finished.reason in ("length", "tool_calls") else "stop"


def openai_tool_calls(calls) -> list[dict]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
            for c in calls]


def openai_chat_response(job: GenerationJob, model: str, text: str, finished: Finished, calls=(), reasoning: str = "") -> dict:
    message = {"role": "assistant", "content": text or (None if calls else "")}
    if reasoning:
        message["reasoning_content"] = reasoning  # as DeepSeek's API and vLLM name it
    if calls:
        message["tool_calls"] = openai_tool_calls(calls)
    return {"id": f"chatcmpl-{job.id}", "object": "chat.completion", "created": job.created, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason(finished)}],
            "usage": usage(finished), "timings": timings(finished)}


def openai_chat_chunk(job: GenerationJob, model: str, delta: dict, finished: Finished | None = None) -> dict:
    return {"id": f"chatcmpl-{job.id}", "object": "chat.completion.chunk", "created": job.created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish_reason(finished) if finished else None}]}


def openai_chat_token_chunks(job: GenerationJob, model: str):
    """A function from a token's text to its whole SSE chunk: the same bytes as
    sse(openai_chat_chunk(job, model, {"content": text})), with one small json.dumps per token."""
    head, tail = json.dumps(openai_chat_chunk(job, model, {"content": ""})).split('"content": ""', 1)
    head, tail = f"data: {head}\"content\": ".encode(), f"{tail}\n\n".encode()
    return lambda text: head + json.dumps(text).encode() + tail


def openai_completion_response(job: GenerationJob, model: str, text: str, finished: Finished | None) -> dict:
    return {"id": f"cmpl-{job.id}", "object": "text_completion", "created": job.created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None,
                         "finish_reason": finish_reason(finished) if finished else None}],
            **({"usage": usage(finished), "timings": timings(finished)} if finished and not job.stream else {})}


def openai_usage_chunk(job: GenerationJob, model: str, finished: Finished, kind: str) -> dict:
    return {"id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{job.id}",
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": job.created, "model": model, "choices": [], "usage": usage(finished), "timings": timings(finished)}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def ollama_line(model: str, kind: str, text: str, finished: Finished | None = None, load_s: float = 0.0,
                reasoning: str = "", calls=()) -> dict:
    line: dict[str, Any] = {"model": model, "created_at": now_iso()}
    if kind == "chat":
        line["message"] = {"role": "assistant", "content": text, **({"thinking": reasoning} if reasoning else {})}
        if calls:  # Ollama's form: arguments as an object, no ids
            line["message"]["tool_calls"] = [{"function": {"name": c.name, "arguments": c.arguments}} for c in calls]
    else:
        line["response"] = text
        if reasoning:
            line["thinking"] = reasoning
    line["done"] = finished is not None
    if finished is not None:
        t = finished.timings
        ns = 1_000_000_000
        line.update(done_reason="stop" if finished.reason == "tool_calls" else finish_reason(finished),  # as Ollama says
                    total_duration=int((t.prompt_s + t.generation_s + load_s) * ns), load_duration=int(load_s * ns),
                    prompt_eval_count=finished.usage.prompt_tokens - finished.usage.cached_tokens,
                    prompt_eval_duration=int(t.prompt_s * ns), eval_count=finished.usage.completion_tokens,
                    eval_duration=int(t.generation_s * ns))
    return line


def sse(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()
