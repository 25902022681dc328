"""OpenAI's API: chat completions, completions, models and embeddings (the Responses API is in
responses_api.py)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..errors import LocalLLMError
from ..events import Finished, Reasoning, Token
from ..printable import printable
from . import models, replies, schemas
from .core import Core, Run, api_error, handled
from .schemas import ApiError, GenerationJob


class OpenAIRoutes(Core):
    def _openai_stream(self, request: Request, runs: list[Run], job: GenerationJob, kind: str,
                       opening: Callable[[int], bytes] | None, token_chunk: Callable[[int, Token], bytes],
                       last_chunk: Callable[[int, Finished], bytes]) -> Response:
        """OpenAI's SSE stream: each answer's chunks (by index) as they come, the usage chunk if
        asked for, errors as an event, then [DONE]."""
        model = runs[0].model

        async def chunks() -> AsyncIterator[bytes]:
            if opening is not None:
                for index in range(len(runs)):
                    yield opening(index)
            ended = []
            try:
                async for index, event in self._merged(request, runs):
                    if isinstance(event, Token):
                        yield token_chunk(index, event)
                    elif isinstance(event, Reasoning):
                        yield replies.sse(replies.openai_chat_chunk(job, model, {"reasoning_content": event.text}, index=index))
                    else:
                        yield last_chunk(index, event)
                        ended.append(event)
                if job.include_usage:
                    yield replies.sse(replies.openai_usage_chunk(job, model, ended, kind))
            except LocalLLMError as exc:
                yield replies.sse(api_error(exc).openai())
            yield replies.sse("[DONE]")
        return StreamingResponse(chunks(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def _openai_tools(self, request: Request, runs: list[Run], job: GenerationJob) -> Response:
        """Replies that may call tools: parsed once whole, so a call's markup is never streamed as
        text; a stream then carries each answer's text and calls as single chunks."""
        answers = await self._collect_all(request, runs)
        model = runs[0].model
        if not job.stream:
            return JSONResponse(replies.openai_chat_response(job, model, answers))
        chunks = []
        for index, answer in enumerate(answers):
            chunks.append(replies.openai_chat_chunk(job, model, {
                "role": "assistant", "content": answer.text or None,
                **({"reasoning_content": answer.reasoning} if answer.reasoning else {})}, index=index, scores=answer.logprobs))
            if answer.calls:
                chunks.append(replies.openai_chat_chunk(job, model, {"tool_calls": [
                    {"index": i, **call} for i, call in enumerate(replies.openai_tool_calls(answer.calls))]}, index=index))
            chunks.append(replies.openai_chat_chunk(job, model, {}, answer.finished, index=index))
        if job.include_usage:
            chunks.append(replies.openai_usage_chunk(job, model, [a.finished for a in answers], "chat"))
        body = b"".join(replies.sse(c) for c in chunks) + replies.sse("[DONE]")
        return Response(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @handled
    async def openai_chat(self, request: Request) -> Response:
        job = schemas.openai_chat(await self._body(request))
        runs = await self._start_all(request, job)
        model = runs[0].model
        if job.tools:
            return await self._openai_tools(request, runs, job)
        if not job.stream:
            return JSONResponse(replies.openai_chat_response(job, model, await self._collect_all(request, runs)))

        fast = replies.openai_chat_token_chunks(job, model)  # one answer, no scores: the common case, made cheap
        return self._openai_stream(
            request, runs, job, "chat",
            lambda index: replies.sse(replies.openai_chat_chunk(job, model, {"role": "assistant", "content": ""}, index=index)),
            lambda index, token: fast(token.text) if index == 0 and not token.logprobs else replies.sse(
                replies.openai_chat_chunk(job, model, {"content": token.text}, index=index, scores=token.logprobs)),
            lambda index, finished: replies.sse(replies.openai_chat_chunk(job, model, {}, finished, index=index)))

    @handled
    async def openai_completions(self, request: Request) -> Response:
        job = schemas.openai_completion(await self._body(request))
        runs = await self._start_all(request, job)
        model = runs[0].model
        if not job.stream:
            return JSONResponse(replies.openai_completion_response(job, model, await self._collect_all(request, runs)))

        offsets = [0] * len(runs)  # where each answer's next token starts, for its scores' text_offset

        def token_chunk(index: int, token: Token) -> bytes:
            scores = None
            if job.sampling.logprobs is not None:
                scores = replies.completion_logprobs(token.logprobs, offsets[index])
                offsets[index] += sum(len(t.token) for t in token.logprobs)
            return replies.sse(replies.openai_completion_chunk(job, model, token.text, None, index, scores))
        return self._openai_stream(
            request, runs, job, "completion", None, token_chunk,
            lambda index, finished: replies.sse(replies.openai_completion_chunk(job, model, "", finished, index)))

    @handled
    async def openai_models(self, request: Request) -> Response:
        listed = await run_in_threadpool(models.listed, self.config.served)
        return JSONResponse({"object": "list", "data": [models.openai_entry(m) for m in listed]})

    @handled
    async def openai_model(self, request: Request) -> Response:
        name = request.path_params["name"]
        listed = await run_in_threadpool(models.listed, self.config.served)
        for model in listed:
            if model.name == name:
                return JSONResponse(models.openai_entry(model))
        raise ApiError(404, f"no installed model is named {printable(name)[:200]!r}", "model", "not_found_error")

    @handled
    async def openai_embeddings(self, request: Request) -> Response:
        body = schemas.embedding_request(await self._body(request))
        vectors, tokens = await self._embed(request, body)
        encode = (lambda v: base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()) if body.base64 else list
        return JSONResponse({"object": "list", "model": body.model,
                             "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
