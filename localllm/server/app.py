"""The ASGI app behind `localllm serve`: routes for the OpenAI and Ollama APIs over one engine.

Request handlers run on the event loop; they never call llama.cpp. A generation is handed to
the engine thread as a SequenceRequest whose events come back through call_soon_threadsafe, so
one slow client never holds up the others or the decode loop.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from .. import __version__
from ..backends.base import SequenceRequest
from ..engine import (
    BusyError,
    Engine,
    EngineStoppedError,
    QueueFullError,
    Served,
    memory_problem,
)
from ..errors import (
    ContextOverflowError,
    GenerationError,
    LocalLLMError,
    ModelLoadError,
    ModelNotFoundError,
    UsageError,
)
from ..events import Finished, PromptProgress, Reasoning, Token, ToolCalls
from ..generation.request import Shaper
from ..options import LoadOptions
from ..printable import printable
from ..registry import InstalledModel, display_name
from . import models, pull, replies, schemas
from .delivery import Events, Mailbox
from .guard import LOOPBACK_ORIGIN_REGEX, Auth, Guard, Policy, is_loopback
from .metrics import CountRequests, Metrics
from .prompts import prepare_job
from .schemas import ApiError, GenerationJob

RETRY_AFTER_S = 2


@dataclass(frozen=True)
class ServerConfig:
    load_options: LoadOptions
    default_model: str | None = None
    api_key: str | None = None
    cors: tuple[str, ...] = ()  # browser origins allowed besides loopback pages ("*": any)
    max_body: int = 8 * 2**20
    quiet: bool = False
    allowed_hosts: tuple[str, ...] = ()  # Host names answered to besides loopback ones ("*": any)
    bind_host: str = "127.0.0.1"
    allow_paths: bool = False  # clients may name model files by path, not only installed models
    served: InstalledModel | None = None  # what -m named, listed under its name on every route

    @property
    def policy(self) -> Policy:
        return Policy(self.bind_host, is_loopback(self.bind_host), self.allowed_hosts, self.cors)


def create_app(config: ServerConfig, engine: Engine) -> Callable:
    api = _Api(config, engine)
    routes = [
        Route("/", api.root, methods=["GET", "HEAD"]),
        Route("/health", api.health, methods=["GET", "HEAD"]),
        Route("/metrics", api.metrics_text, methods=["GET"]),
        Route("/v1/chat/completions", api.openai_chat, methods=["POST"]),
        Route("/v1/completions", api.openai_completions, methods=["POST"]),
        Route("/v1/models", api.openai_models, methods=["GET"]),
        Route("/v1/models/{name:path}", api.openai_model, methods=["GET"]),
        Route("/v1/embeddings", api.openai_embeddings, methods=["POST"]),
        Route("/api/chat", api.ollama_chat, methods=["POST"]),
        Route("/api/generate", api.ollama_generate, methods=["POST"]),
        Route("/api/tags", api.ollama_tags, methods=["GET"]),
        Route("/api/show", api.ollama_show, methods=["POST"]),
        Route("/api/ps", api.ollama_ps, methods=["GET"]),
        Route("/api/embed", api.ollama_embed, methods=["POST"]),
        Route("/api/embeddings", api.ollama_embed, methods=["POST"]),
        Route("/api/delete", api.ollama_delete, methods=["DELETE"]),
        Route("/api/copy", api.ollama_copy, methods=["POST"]),
        Route("/api/pull", api.ollama_pull, methods=["POST"]),
        Route("/api/version", api.ollama_version, methods=["GET"]),
    ]
    app: Callable = Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_allowed})
    app = Auth(app, config.api_key, lambda path, error: _error_response(path, error))
    app = CORSMiddleware(app, allow_origins=list(config.cors), allow_origin_regex=LOOPBACK_ORIGIN_REGEX,
                         allow_methods=["GET", "POST", "OPTIONS"], allow_headers=["authorization", "content-type"])
    app = Guard(app, config.policy, lambda scope, status, message: _error_response(scope["path"], ApiError(status, message)))
    api.metrics = Metrics(engine, routes)
    return CountRequests(_AccessLog(app, config.quiet), api.metrics)


# ---- errors ---------------------------------------------------------------------------------
def _api_error(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ModelNotFoundError):
        return ApiError(404, str(exc), "model", "not_found_error")
    if isinstance(exc, ContextOverflowError):
        return ApiError(400, f"the prompt is {exc.prompt_tokens} tokens and the context window is {exc.n_ctx} "
                             f"tokens: it does not fit (nothing was cut)", "messages", code="context_length_exceeded")
    if isinstance(exc, EngineStoppedError):
        return ApiError(503, str(exc), None, "server_error")
    if isinstance(exc, (QueueFullError, BusyError)):
        return ApiError(503, str(exc), None, "server_busy", {"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(exc, UsageError):
        return ApiError(400, str(exc))
    if isinstance(exc, ModelLoadError):
        return ApiError(500, str(exc), "model", "server_error")
    return ApiError(500, str(exc) if isinstance(exc, LocalLLMError) else "internal error", None, "server_error")


def _error_response(path: str, error: ApiError) -> JSONResponse:
    body = error.openai() if not path.startswith("/api/") else error.ollama()
    return JSONResponse(body, status_code=error.status, headers=error.headers)


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error_response(request.url.path, ApiError(404, f"no such endpoint: {printable(request.url.path)[:200]}"))


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return _error_response(request.url.path, ApiError(405, f"{request.method} is not allowed here"))


def _handled(handler):
    """Turn errors into the API's error object; the server goes on serving."""
    async def wrapper(self, request: Request) -> Response:
        try:
            return await handler(self, request)
        except Exception as exc:  # every failure answers the client; none stops the server
            error = _api_error(exc)
            if error.status >= 500 and not isinstance(exc, LocalLLMError):
                sys.stderr.write(f"localllm: {request.url.path}: {type(exc).__name__}: {printable(exc)[:300]}\n")
            return _error_response(request.url.path, error)
    return wrapper


@dataclass
class _Run:
    served: Served
    sequence: SequenceRequest
    events: Events
    model: str  # the name the client used
    shaper: Shaper  # reasoning apart from the answer, tool calls parsed: as for Model.chat
    keep_alive: float | None | str = "unchanged"


class _Api:
    def __init__(self, config: ServerConfig, engine: Engine):
        self.config, self.engine = config, engine
        self._mailbox: Mailbox | None = None

    @property
    def mailbox(self) -> Mailbox:
        if self._mailbox is None:  # made on the serving event loop, at the first request
            self._mailbox = Mailbox(asyncio.get_running_loop(), self.metrics.finished)
        return self._mailbox

    async def _body(self, request: Request) -> object:
        """The JSON body, read up to the size limit."""
        limit = self.config.max_body
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise ApiError(413, f"the request body is larger than {limit // 2**20} MiB")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the request body is larger than {limit // 2**20} MiB")
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
        except (ValueError, RecursionError):
            raise ApiError(400, "the request body is not valid JSON") from None
        if schemas.has_lone_surrogate(body):
            raise ApiError(400, "the request body holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text")
        return body

    def _is_default(self, name: str | None) -> bool:
        served = self.config.served
        return name in (None, self.config.default_model) or (served is not None and name == served.name)

    def _name_of(self, served: Served) -> str:
        mine = self.config.served
        return mine.name if mine is not None and mine.path.absolute() == served.path else display_name(served.path)

    async def _acquire(self, name: str | None) -> Served:
        if self._is_default(name):
            return await asyncio.wrap_future(self.engine.acquire(self.config.default_model, self.config.load_options))
        model = await run_in_threadpool(models.find, name, self.config.allow_paths)
        try:
            return await asyncio.wrap_future(self.engine.acquire(str(model.path), self.config.load_options))
        except ModelLoadError as exc:
            if model.source != "path" or memory_problem(exc):
                raise
            raise ApiError(400, str(exc), "model") from None  # a file the client named (--allow-model-paths)

    async def _start(self, request: Request, job: GenerationJob) -> _Run:
        served = await self._acquire(job.model)
        try:
            prepared = await run_in_threadpool(prepare_job, served.model, job)
            events = Events(self.mailbox)
            sequence = SequenceRequest(prepared.tokens, prepared.sampling, events.put)
            self.engine.generate(served, sequence)
        except BaseException:
            self.engine.release(served)
            raise
        return _Run(served, sequence, events, job.model or self._name_of(served), prepared.shaper(), job.keep_alive)

    async def _stream(self, request: Request, run: _Run, poll: bool = False) -> AsyncIterator[Token | Finished]:
        """The run's events until Finished; the sequence ends when this does, however it ends.
        `poll`: watch for the client leaving (streaming responses are told by Starlette)."""
        try:
            while True:
                event = await run.events.next(request if poll else None)
                if isinstance(event, Finished):
                    request.state.tokens = f"{event.usage.prompt_tokens}+{event.usage.completion_tokens}"
                    if event.reason == "cancelled":
                        raise GenerationError("the answer was stopped: the server is shutting down")
                for shaped in run.shaper.feed(event):
                    if not isinstance(shaped, PromptProgress):
                        yield shaped
                if isinstance(event, Finished):
                    return
        finally:
            run.sequence.cancel()
            self.engine.release(run.served, run.keep_alive)

    async def _collect(self, request: Request, run: _Run) -> tuple[str, Finished, str, tuple]:
        """(answer without its tool calls, Finished, reasoning, the calls)."""
        parts, thought, finished, calls = [], [], None, None
        async for event in self._stream(request, run, poll=True):  # to its end, so it closes at once
            if isinstance(event, Token):
                parts.append(event.text)
            elif isinstance(event, Reasoning):
                thought.append(event.text)
            elif isinstance(event, ToolCalls):
                calls = event
            else:
                finished = event
        text = calls.text if calls is not None else "".join(parts)
        return text, finished, "".join(thought), calls.calls if calls is not None else ()

    def _openai_stream(self, request: Request, run: _Run, job: GenerationJob, kind: str, opening: bytes | None,
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
                yield replies.sse(_api_error(exc).openai())
            yield replies.sse("[DONE]")
        return StreamingResponse(chunks(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def _openai_tools(self, request: Request, run: _Run, job: GenerationJob) -> Response:
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

    # ---- routes ---------------------------------------------------------------------------
    async def root(self, request: Request) -> Response:
        stopped = self.engine.health()
        if stopped is not None:
            return PlainTextResponse(f"localllm: the engine has stopped ({stopped}); restart the server\n", 503)
        return PlainTextResponse("localllm is running\n")

    async def metrics_text(self, request: Request) -> Response:
        body, media_type = self.metrics.render()
        return Response(body, media_type=media_type)

    async def health(self, request: Request) -> Response:
        stopped = self.engine.health()
        if stopped is not None:
            return JSONResponse({"status": "error", "error": f"the engine has stopped: {stopped}"}, 503)
        return JSONResponse({"status": "ok"})

    @_handled
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

    @_handled
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

    @_handled
    async def openai_models(self, request: Request) -> Response:
        listed = await run_in_threadpool(models.listed, self.config.served)
        return JSONResponse({"object": "list", "data": [models.openai_entry(m) for m in listed]})

    @_handled
    async def openai_model(self, request: Request) -> Response:
        name = request.path_params["name"]
        listed = await run_in_threadpool(models.listed, self.config.served)
        for model in listed:
            if model.name == name:
                return JSONResponse(models.openai_entry(model))
        raise ApiError(404, f"no installed model is named {printable(name)[:200]!r}", "model", "not_found_error")

    @_handled
    async def openai_embeddings(self, request: Request) -> Response:
        body = schemas.embedding_request(await self._body(request))
        vectors, tokens = await self._embed(request, body)
        encode = (lambda v: base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()) if body.base64 else list
        return JSONResponse({"object": "list", "model": body.model,
                             "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def _embed(self, request: Request, job: schemas.EmbeddingJob, keep_alive="unchanged") -> tuple[list, int]:
        served = await self._acquire(job.model)
        try:
            if not served.model.can_embed:
                raise ApiError(400, f"{job.model} is not an embedding model: it cannot make embeddings", "model")
            vectors, tokens = await asyncio.wrap_future(self.engine.submit(served.model.embed, job.inputs))
        finally:
            self.engine.release(served, keep_alive)
        request.state.tokens = str(tokens)
        return vectors, tokens

    @_handled
    async def ollama_embed(self, request: Request) -> Response:
        """/api/embed, and the older /api/embeddings (one text, one vector)."""
        started, legacy = time.perf_counter(), request.url.path == "/api/embeddings"
        job, keep_alive = schemas.ollama_embed(await self._body(request), legacy)
        vectors, tokens = await self._embed(request, job, keep_alive)
        return JSONResponse({"embedding": vectors[0]} if legacy else {
            "model": job.model, "embeddings": vectors, "prompt_eval_count": tokens,
            "total_duration": int((time.perf_counter() - started) * 1e9)})

    @_handled
    async def ollama_delete(self, request: Request) -> Response:
        await run_in_threadpool(models.delete, schemas.ollama_name(await self._body(request), "model"))
        return Response(status_code=200)

    @_handled
    async def ollama_pull(self, request: Request) -> Response:
        return await pull.reply(await self._body(request))

    @_handled
    async def ollama_copy(self, request: Request) -> Response:
        body = await self._body(request)
        await run_in_threadpool(models.copy, schemas.ollama_name(body, "source"), schemas.ollama_name(body, "destination"))
        return Response(status_code=200)

    @_handled
    async def ollama_chat(self, request: Request) -> Response:
        job = schemas.ollama_chat(await self._body(request))
        return await self._ollama(request, job, "chat")

    @_handled
    async def ollama_generate(self, request: Request) -> Response:
        job, _raw = schemas.ollama_generate(await self._body(request))
        if job.prompt is None and job.messages is None:  # Ollama's way to load (or, keep_alive 0, unload) a model
            self.engine.release(await self._acquire(job.model), job.keep_alive)
            return JSONResponse({"model": job.model, "created_at": replies.now_iso(), "response": "", "done": True,
                                 "done_reason": "load"})
        return await self._ollama(request, job, "generate")

    async def _ollama(self, request: Request, job: GenerationJob, kind: str) -> Response:
        run = await self._start(request, job)
        if job.tools:  # parsed once whole, as for OpenAI's API; a stream gets the text, the calls, then done
            text, finished, reasoning, calls = await self._collect(request, run)
            last = replies.ollama_line(run.model, kind, text, finished, reasoning=reasoning, calls=calls)
            if not job.stream:
                return JSONResponse(last)
            lines = [replies.ollama_line(run.model, kind, text, reasoning=reasoning, calls=calls),
                     replies.ollama_line(run.model, kind, "", finished)]
            return Response(b"".join(json.dumps(line).encode() + b"\n" for line in lines), media_type="application/x-ndjson")
        if not job.stream:
            text, finished, reasoning, _ = await self._collect(request, run)
            return JSONResponse(replies.ollama_line(run.model, kind, text, finished, reasoning=reasoning))

        async def lines() -> AsyncIterator[bytes]:
            try:
                async for event in self._stream(request, run):
                    if isinstance(event, Token):
                        line = replies.ollama_line(run.model, kind, event.text)
                    elif isinstance(event, Reasoning):
                        line = replies.ollama_line(run.model, kind, "", reasoning=event.text)
                    else:
                        line = replies.ollama_line(run.model, kind, "", event)
                    yield json.dumps(line).encode() + b"\n"
            except LocalLLMError as exc:
                yield json.dumps(_api_error(exc).ollama()).encode() + b"\n"
        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @_handled
    async def ollama_tags(self, request: Request) -> Response:
        listed = await run_in_threadpool(models.listed, self.config.served)
        return JSONResponse({"models": [models.ollama_entry(m) for m in listed]})

    @_handled
    async def ollama_show(self, request: Request) -> Response:
        body = await self._body(request)
        if not isinstance(body, dict) or not isinstance(body.get("model") or body.get("name"), str):
            raise ApiError(400, "'model' is required", "model")
        name = body.get("model") or body.get("name")
        model = self.config.served if self._is_default(name) and self.config.served is not None else \
            await run_in_threadpool(models.find, name, self.config.allow_paths)
        return JSONResponse(await run_in_threadpool(models.ollama_show, model))

    @_handled
    async def ollama_ps(self, request: Request) -> Response:
        return JSONResponse({"models": [models.ollama_running(s, self.engine.keep_alive_of(s), self._name_of(s))
                                        for s in self.engine.loaded()]})

    async def ollama_version(self, request: Request) -> Response:
        return JSONResponse({"version": __version__})


# ---- middleware -----------------------------------------------------------------------------
class _AccessLog:
    """One line per request on stderr: client, method, path, status, tokens, seconds."""

    def __init__(self, app: Callable, quiet: bool):
        self.app, self.quiet = app, quiet

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or self.quiet:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [0]

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        scope.setdefault("state", {})
        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client") or ("-", 0)
            tokens = scope["state"].get("tokens", "-")
            sys.stderr.write(f"{client[0]} {scope['method']} {printable(scope['path'])[:200]} {status[0] or '-'} "
                             f"{tokens} tok {time.perf_counter() - started:.3f}s\n")
