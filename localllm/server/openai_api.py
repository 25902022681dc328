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
    def _openai_stream(self, request: Request, run: Run, job: GenerationJob, kind: str, opening: bytes | None,
                       token_chunk: Callable[[str], bytes], last_chunk: Callable[[Finished], bytes]) -> Response:
        """OpenAI's SSE stream: chunks, the usage chunk if asked for, errors as an event, then [DONE]."""
        async def chunks() -> AsyncIterator[bytes]:
            if opening is not None:
                yield opening
            try:
                async for event in self._stream(request, run):
                    if isinstance(event, Token):
                        yield token_chunk(event.text)
                    elif isinstance(event, Reasoning):
                        yield replies.sse(replies.openai_chat_chunk(job, run.model, {"reasoning_content": event.text}))
                    else:
                        yield last_chunk(event)
                        if job.include_usage:
                            yield replies.sse(replies.openai_usage_chunk(job, run.model, event, kind))
            except LocalLLMError as exc:
                yield replies.sse(api_error(exc).openai())
            yield replies.sse("[DONE]")
        return StreamingResponse(chunks(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def _openai_tools(self, request: Request, run: Run, job: GenerationJob) -> Response:
        """A reply that may call tools: parsed once it is whole, so a call's markup is never
        streamed as text; a stream then carries the text and the calls as single chunks."""
        text, finished, reasoning, calls = await self._collect(request, run)
        if not job.stream:
            return JSONResponse(replies.openai_chat_response(job, run.model, text, finished, calls, reasoning))
        chunks = [replies.openai_chat_chunk(job, run.model, {"role": "assistant", "content": text or None,
                                                             **({"reasoning_content": reasoning} if reasoning else {})})]
        if calls:
            chunks.append(replies.openai_chat_chunk(job, run.model, {"tool_calls": [
                {"index": i, **call} for i, call in enumerate(replies.openai_tool_calls(calls))]}))
        chunks.append(replies.openai_chat_chunk(job, run.model, {}, finished))
        if job.include_usage:
            chunks.append(replies.openai_usage_chunk(job, run.model, finished, "chat"))
        body = b"".join(replies.sse(c) for c in chunks) + replies.sse("[DONE]")
        return Response(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @handled
    async def openai_chat(self, request: Request) -> Response:
        job = schemas.openai_chat(await self._body(request))
        run = await self._start(request, job)
        if job.tools:
            return await self._openai_tools(request, run, job)
        if not job.stream:
            text, finished, reasoning, _ = await self._collect(request, run)
            return JSONResponse(replies.openai_chat_response(job, run.model, text, finished, reasoning=reasoning))

        return self._openai_stream(
            request, run, job, "chat", replies.sse(replies.openai_chat_chunk(job, run.model, {"role": "assistant", "content": ""})),
            replies.openai_chat_token_chunks(job, run.model),
            lambda finished: replies.sse(replies.openai_chat_chunk(job, run.model, {}, finished)))

    @handled
    async def openai_completions(self, request: Request) -> Response:
        job = schemas.openai_completion(await self._body(request))
        run = await self._start(request, job)
        if not job.stream:
            text, finished, reasoning, _ = await self._collect(request, run)
            return JSONResponse(replies.openai_completion_response(job, run.model, text, finished))

        return self._openai_stream(
            request, run, job, "completion", None,
            lambda text: replies.sse(replies.openai_completion_response(job, run.model, text, None)),
            lambda finished: replies.sse(replies.openai_completion_response(job, run.model, "", finished)))

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
