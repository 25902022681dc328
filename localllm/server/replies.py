"""The answers' shapes: OpenAI's chat and completion responses, stream chunks and usage, and
Ollama's NDJSON lines, from one GenerationJob and its events."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..events import Finished, TokenLogprob
from .schemas import GenerationJob


@dataclass
class Collected:
    """One whole answer: its text without tool calls, reasoning, calls, and its tokens' scores."""

    text: str
    finished: Finished
    reasoning: str = ""
    calls: tuple = ()
    logprobs: list[TokenLogprob] = field(default_factory=list)


def usage(finished: Finished | list[Finished]) -> dict:
    """For n answers to one prompt, the prompt counts once (as OpenAI bills it)."""
    every = finished if isinstance(finished, list) else [finished]
    first = every[0].usage
    completion = sum(f.usage.completion_tokens for f in every)
    drafted, accepted = sum(f.usage.drafted_tokens for f in every), sum(f.usage.accepted_tokens for f in every)
    # OpenAI's names for a predicted output's tokens fit speculation's drafts: accepted ones cost
    # no step of their own, rejected ones were evaluated and thrown away.
    return {"prompt_tokens": first.prompt_tokens, "completion_tokens": completion,
            "total_tokens": first.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": first.cached_tokens},
            "completion_tokens_details": {"accepted_prediction_tokens": accepted,
                                          "rejected_prediction_tokens": drafted - accepted}}


def timings(finished: Finished) -> dict:
    """llama-server's `timings` object: what its clients and dashboards read."""
    u, t = finished.usage, finished.timings
    return {"cache_n": u.cached_tokens, "prompt_n": u.prompt_tokens - u.cached_tokens, "prompt_ms": t.prompt_s * 1000,
            "prompt_per_second": t.prompt_tokens_per_s, "predicted_n": u.completion_tokens,
            "predicted_ms": t.generation_s * 1000, "predicted_per_second": t.generation_tokens_per_s,
            "draft_n": u.drafted_tokens, "draft_n_accepted": u.accepted_tokens}


def finish_reason(finished: Finished) -> str:
    return finished.reason if finished.reason in ("length", "tool_calls") else "stop"


def stop_reason(finished: Finished | None) -> str | None:
    """vLLM's addition to a choice: the stop string that ended it (None: the end of turn, or a limit)."""
    return finished.stop_sequence if finished is not None else None


def openai_tool_calls(calls) -> list[dict]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
            for c in calls]


def logprob_entries(scores) -> list[dict]:
    """Chat Completions' (and Ollama's) per-token scores."""
    return [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes),
             "top_logprobs": [{"token": text, "logprob": logprob, "bytes": list(data)} for text, data, logprob in t.top]}
            for t in scores]


def completion_logprobs(scores, offset: int = 0) -> dict:
    """The Completions API's older form: parallel lists, alternatives as {token: logprob}."""
    offsets = []
    for t in scores:
        offsets.append(offset)
        offset += len(t.token)
    return {"tokens": [t.token for t in scores], "token_logprobs": [t.logprob for t in scores],
            "top_logprobs": [{text: logprob for text, _, logprob in t.top} for t in scores], "text_offset": offsets}


def openai_chat_response(job: GenerationJob, model: str, answers: list[Collected]) -> dict:
    choices = []
    for index, answer in enumerate(answers):
        message = {"role": "assistant", "content": answer.text or (None if answer.calls else "")}
        if answer.reasoning:
            message["reasoning_content"] = answer.reasoning  # as DeepSeek's API and vLLM name it
        if answer.calls:
            message["tool_calls"] = openai_tool_calls(answer.calls)
        choices.append({"index": index, "message": message, "finish_reason": finish_reason(answer.finished),
                        "stop_reason": stop_reason(answer.finished),
                        "logprobs": {"content": logprob_entries(answer.logprobs), "refusal": None}
                        if job.sampling.logprobs is not None else None})
    return {"id": f"chatcmpl-{job.id}", "object": "chat.completion", "created": job.created, "model": model,
            "choices": choices, "usage": usage([a.finished for a in answers]), "timings": timings(answers[0].finished)}


def openai_chat_chunk(job: GenerationJob, model: str, delta: dict, finished: Finished | None = None, index: int = 0,
                      scores=None) -> dict:
    return {"id": f"chatcmpl-{job.id}", "object": "chat.completion.chunk", "created": job.created, "model": model,
            "choices": [{"index": index, "delta": delta,
                         "logprobs": {"content": logprob_entries(scores), "refusal": None} if scores else None,
                         "finish_reason": finish_reason(finished) if finished else None, "stop_reason": stop_reason(finished)}]}


def openai_chat_token_chunks(job: GenerationJob, model: str):
    """A function from a token's text to its whole SSE chunk: the same bytes as
    sse(openai_chat_chunk(job, model, {"content": text})), with one small json.dumps per token."""
    head, tail = json.dumps(openai_chat_chunk(job, model, {"content": ""})).split('"content": ""', 1)
    head, tail = f"data: {head}\"content\": ".encode(), f"{tail}\n\n".encode()
    return lambda text: head + json.dumps(text).encode() + tail


def openai_completion_response(job: GenerationJob, model: str, answers: list[Collected]) -> dict:
    return {"id": f"cmpl-{job.id}", "object": "text_completion", "created": job.created, "model": model,
            "choices": [{"index": i, "text": a.text, "finish_reason": finish_reason(a.finished),
                         "stop_reason": stop_reason(a.finished),
                         "logprobs": completion_logprobs(a.logprobs) if job.sampling.logprobs is not None else None}
                        for i, a in enumerate(answers)],
            "usage": usage([a.finished for a in answers]), "timings": timings(answers[0].finished)}


def openai_completion_chunk(job: GenerationJob, model: str, text: str, finished: Finished | None = None, index: int = 0,
                            logprobs: dict | None = None) -> dict:
    return {"id": f"cmpl-{job.id}", "object": "text_completion", "created": job.created, "model": model,
            "choices": [{"index": index, "text": text, "logprobs": logprobs,
                         "finish_reason": finish_reason(finished) if finished else None, "stop_reason": stop_reason(finished)}]}


def openai_usage_chunk(job: GenerationJob, model: str, finished: list[Finished], kind: str) -> dict:
    return {"id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{job.id}",
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": job.created, "model": model, "choices": [], "usage": usage(finished), "timings": timings(finished[0])}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def ollama_line(model: str, kind: str, text: str, finished: Finished | None = None, load_s: float = 0.0,
                reasoning: str = "", calls=(), scores=None) -> dict:
    line: dict[str, Any] = {"model": model, "created_at": now_iso()}
    if scores:
        line["logprobs"] = logprob_entries(scores)
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
