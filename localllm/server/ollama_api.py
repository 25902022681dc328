"""Ollama's API: chat, generate, embeddings and model management (tags, show, ps, pull, copy,
delete)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .. import __version__
from ..errors import LocalLLMError
from ..events import Reasoning, Token
from . import models, ollama_schemas, pull, replies
from .core import Core, api_error, handled
from .schemas import ApiError, GenerationJob


class OllamaRoutes(Core):
    @handled
    async def ollama_embed(self, request: Request) -> Response:
        """/api/embed, and the older /api/embeddings (one text, one vector)."""
        started, legacy = time.perf_counter(), request.url.path == "/api/embeddings"
        job, keep_alive = ollama_schemas.ollama_embed(await self._body(request), legacy)
        vectors, tokens = await self._embed(request, job, keep_alive)
        return JSONResponse({"embedding": vectors[0]} if legacy else {
            "model": job.model, "embeddings": vectors, "prompt_eval_count": tokens,
            "total_duration": int((time.perf_counter() - started) * 1e9)})

    @handled
    async def ollama_delete(self, request: Request) -> Response:
        await run_in_threadpool(models.delete, ollama_schemas.ollama_name(await self._body(request), "model"))
        return Response(status_code=200)

    @handled
    async def ollama_pull(self, request: Request) -> Response:
        return await pull.reply(await self._body(request))

    @handled
    async def ollama_copy(self, request: Request) -> Response:
        body = await self._body(request)
        await run_in_threadpool(models.copy, ollama_schemas.ollama_name(body, "source"), ollama_schemas.ollama_name(body, "destination"))
        return Response(status_code=200)

    @handled
    async def ollama_chat(self, request: Request) -> Response:
        job = ollama_schemas.ollama_chat(await self._body(request))
        return await self._ollama(request, job, "chat")

    @handled
    async def ollama_generate(self, request: Request) -> Response:
        job, _raw = ollama_schemas.ollama_generate(await self._body(request))
        if job.prompt is None and job.messages is None:  # Ollama's way to load (or, keep_alive 0, unload) a model
            self.engine.release(await self._acquire(job.model), job.keep_alive)
            return JSONResponse({"model": job.model, "created_at": replies.now_iso(), "response": "", "done": True,
                                 "done_reason": "load"})
        return await self._ollama(request, job, "generate")

    async def _ollama(self, request: Request, job: GenerationJob, kind: str) -> Response:
        run = await self._start(request, job)
        if job.tools:  # parsed once whole, as for OpenAI's API; a stream gets the text, the calls, then done
            a = await self._collect(request, run)
            last = replies.ollama_line(run.model, kind, a.text, a.finished, reasoning=a.reasoning, calls=a.calls,
                                       scores=a.logprobs)
            if not job.stream:
                return JSONResponse(last)
            lines = [replies.ollama_line(run.model, kind, a.text, reasoning=a.reasoning, calls=a.calls, scores=a.logprobs),
                     replies.ollama_line(run.model, kind, "", a.finished)]
            return Response(b"".join(json.dumps(line).encode() + b"\n" for line in lines), media_type="application/x-ndjson")
        if not job.stream:
            a = await self._collect(request, run)
            return JSONResponse(replies.ollama_line(run.model, kind, a.text, a.finished, reasoning=a.reasoning,
                                                    scores=a.logprobs))

        async def lines() -> AsyncIterator[bytes]:
            try:
                async for event in self._stream(request, run):
                    if isinstance(event, Token):
                        line = replies.ollama_line(run.model, kind, event.text, scores=event.logprobs)
                    elif isinstance(event, Reasoning):
                        line = replies.ollama_line(run.model, kind, "", reasoning=event.text)
                    else:
                        line = replies.ollama_line(run.model, kind, "", event)
                    yield json.dumps(line).encode() + b"\n"
            except LocalLLMError as exc:
                yield json.dumps(api_error(exc).ollama()).encode() + b"\n"
        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @handled
    async def ollama_tags(self, request: Request) -> Response:
        listed = await run_in_threadpool(models.listed, self.config.served)
        return JSONResponse({"models": [models.ollama_entry(m) for m in listed]})

    @handled
    async def ollama_show(self, request: Request) -> Response:
        body = await self._body(request)
        if not isinstance(body, dict) or not isinstance(body.get("model") or body.get("name"), str):
            raise ApiError(400, "'model' is required", "model")
        name = body.get("model") or body.get("name")
        model = self.config.served if self._is_default(name) and self.config.served is not None else \
            await run_in_threadpool(models.find, name, self.config.allow_paths)
        return JSONResponse(await run_in_threadpool(models.ollama_show, model))

    @handled
    async def ollama_ps(self, request: Request) -> Response:
        return JSONResponse({"models": [models.ollama_running(s, self.engine.keep_alive_of(s), self._name_of(s))
                                        for s in self.engine.loaded()]})

    async def ollama_version(self, request: Request) -> Response:
        return JSONResponse({"version": __version__})
