"""Anthropic's Messages API: POST /v1/messages and /v1/messages/count_tokens on the one request
path (errors in Anthropic's shape: core.error_response)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..errors import LocalLLMError
from ..events import Reasoning, Token
from .anthropic import Message, read_request
from .core import Core, api_error, handled
from .prompts import prepare_job


class AnthropicRoutes(Core):
    @handled
    async def anthropic_messages(self, request: Request) -> Response:
        job = read_request(await self._body(request))
        run = await self._start(request, job)
        message = Message(run.model, len(run.sequence.tokens))
        if not job.stream or job.tools:  # with tools, parsed once whole (as the other APIs do)
            a = await self._collect(request, run)
            events = message.start() + (message.thinking(a.reasoning) if a.reasoning else b"") + \
                (message.text(a.text) if a.text else b"") + message.calls(a.calls)
            whole, tail = message.finish(a.finished)
            if not job.stream:
                return JSONResponse(whole)
            return Response(events + tail, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

        async def events() -> AsyncIterator[bytes]:
            yield message.start()
            try:
                async for event in self._stream(request, run):
                    if isinstance(event, Token):
                        yield message.text(event.text)
                    elif isinstance(event, Reasoning):
                        yield message.thinking(event.text)
                    else:
                        yield message.finish(event)[1]
            except LocalLLMError as exc:
                yield message.event("error", error=api_error(exc).anthropic()["error"])
        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @handled
    async def anthropic_count_tokens(self, request: Request) -> Response:
        """The prompt's tokens as the model's template renders it: what a request would evaluate."""
        job = read_request(await self._body(request), counting=True)
        served = await self._acquire(job.model)
        try:
            prepared = await run_in_threadpool(prepare_job, served.model, job)
        finally:
            self.engine.release(served)
        return JSONResponse({"input_tokens": len(prepared.tokens)})
