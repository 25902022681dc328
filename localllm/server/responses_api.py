"""OpenAI's Responses API: POST /v1/responses on the one request path, and the stored responses
GET and DELETE /v1/responses/{id} reach."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..errors import LocalLLMError
from ..events import Reasoning, Token
from ..printable import printable
from .core import Core, Run, api_error, handled
from .responses import Output, ResponseSpec, conversation_after, read_request
from .schemas import ApiError


class ResponsesRoutes(Core):
    @handled
    async def responses_create(self, request: Request) -> Response:
        body = await self._body(request)
        earlier = None
        if isinstance(body, dict) and body.get("previous_response_id") is not None:
            earlier = self._stored(body["previous_response_id"], "previous_response_id")[1]
        job, spec, conversation = read_request(body, earlier)
        run = await self._start(request, job)
        output = Output(spec, run.model)
        if not job.stream or job.tools:  # with tools, parsed once whole (as chat completions do)
            a = await self._collect(request, run)
            events = output.start() + (output.reasoning(a.reasoning) if a.reasoning else b"") + \
                (output.text(a.text, a.logprobs) if a.text else b"") + output.calls(a.calls)
            response, tail = output.finish(a.finished, await self._count(run, a.reasoning))
            self._keep(spec, response, conversation)
            if not job.stream:
                return JSONResponse(response)
            return Response(events + tail, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

        async def events() -> AsyncIterator[bytes]:
            yield output.start()
            thought = []
            try:
                async for event in self._stream(request, run):
                    if isinstance(event, Token):
                        yield output.text(event.text, event.logprobs)
                    elif isinstance(event, Reasoning):
                        thought.append(event.text)
                        yield output.reasoning(event.text)
                    else:
                        response, tail = output.finish(event, await self._count(run, "".join(thought)))
                        self._keep(spec, response, conversation)
                        yield tail
            except LocalLLMError as exc:
                yield output.failed(api_error(exc))
        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @handled
    async def responses_get(self, request: Request) -> Response:
        return JSONResponse(self._stored(request.path_params["id"], None)[0])

    @handled
    async def responses_delete(self, request: Request) -> Response:
        response_id = request.path_params["id"]
        if self.store is None or not self.store.delete(response_id):
            raise self._missing(response_id, None)
        return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})

    def _stored(self, response_id, param: str | None) -> tuple[dict, list[dict]]:
        if not isinstance(response_id, str):
            raise ApiError(400, f"'{param}' must be a string", param)
        if self.store is None:
            raise ApiError(400, "this server keeps no responses (serve --no-store): send the whole conversation", param)
        found = self.store.get(response_id)
        if found is None:
            raise self._missing(response_id, param)
        return found

    def _missing(self, response_id: str, param: str | None) -> ApiError:
        hours = self.store.ttl_s / 3600 if self.store is not None else 0
        return ApiError(404 if param is None else 400,
                        f"no stored response {printable(response_id)[:80]!r} (responses are kept {hours:g} h after "
                        "their last use, and only while the server runs)", param, "not_found_error" if param is None
                        else "invalid_request_error", code="previous_response_not_found" if param else None)

    def _keep(self, spec: ResponseSpec, response: dict, conversation: list[dict]) -> None:
        if self.store is not None and spec.store:
            self.store.put(response, conversation_after(conversation, response["output"]))

    @staticmethod
    async def _count(run: Run, text: str) -> int:
        return len(await run_in_threadpool(run.served.model.tokenize, text)) if text else 0
