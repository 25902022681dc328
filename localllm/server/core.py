"""What every API's handlers share: the server's configuration, errors in each API's shape, the
request body read within its limit, the model acquired, and a generation started on the engine
thread with its events streamed back.

Request handlers run on the event loop; they never call llama.cpp. A generation is handed to
the engine thread as a SequenceRequest whose events come back through call_soon_threadsafe, so
one slow client never holds up the others or the decode loop.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

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
from ..events import Event, Finished, PromptProgress, Reasoning, Token, ToolCalls
from ..generation.request import Shaper
from ..options import LoadOptions
from ..printable import printable
from ..registry import InstalledModel, display_name
from . import models, schemas
from .delivery import Events, Mailbox
from .guard import Policy, is_loopback
from .prompts import prepare_job
from .replies import Collected
from .responses import ResponseStore
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
    store_responses: bool = True  # the Responses API keeps responses for previous_response_id
    allow_image_urls: bool = False  # http(s) image URLs are fetched (else only data: URLs are taken)
    allow_paths: bool = False  # clients may name model files by path, not only installed models
    served: InstalledModel | None = None  # what -m named, listed under its name on every route

    @property
    def policy(self) -> Policy:
        return Policy(self.bind_host, is_loopback(self.bind_host), self.allowed_hosts, self.cors)



# ---- errors ---------------------------------------------------------------------------------
def api_error(exc: Exception) -> ApiError:
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


def error_response(path: str, error: ApiError) -> JSONResponse:
    body = error.ollama() if path.startswith("/api/") else error.anthropic() if path.startswith("/v1/messages") \
        else error.openai()
    return JSONResponse(body, status_code=error.status, headers=error.headers)


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(request.url.path, ApiError(404, f"no such endpoint: {printable(request.url.path)[:200]}"))


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return error_response(request.url.path, ApiError(405, f"{request.method} is not allowed here"))


def handled(handler):
    """Turn errors into the API's error object; the server goes on serving."""
    async def wrapper(self, request: Request) -> Response:
        try:
            return await handler(self, request)
        except Exception as exc:  # every failure answers the client; none stops the server
            error = api_error(exc)
            if error.status >= 500 and not isinstance(exc, LocalLLMError):
                sys.stderr.write(f"localllm: {request.url.path}: {type(exc).__name__}: {printable(exc)[:300]}\n")
            return error_response(request.url.path, error)
    return wrapper


@dataclass
class Run:
    served: Served
    sequence: SequenceRequest
    events: Events
    model: str  # the name the client used
    shaper: Shaper  # reasoning apart from the answer, tool calls parsed: as for Model.chat
    keep_alive: float | None | str = "unchanged"



class Core:
    """The state and steps the route classes (openai_api, ollama_api, ...) build on."""

    def __init__(self, config: ServerConfig, engine: Engine):
        self.config, self.engine = config, engine
        self.store = ResponseStore() if config.store_responses else None
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

    async def _start(self, request: Request, job: GenerationJob) -> Run:
        if self.config.allow_image_urls and job.messages:
            from .image_urls import fetch_images

            job.messages = await run_in_threadpool(fetch_images, job.messages)
        served = await self._acquire(job.model)
        try:
            if job.n > 1 and not served.model.capabilities.batching:
                raise ApiError(400, f"the {served.model.engine} engine answers one sequence at a time: 'n' must be 1", "n")
            prepared = await run_in_threadpool(prepare_job, served.model, job)
            events = Events(self.mailbox)
            sequence = SequenceRequest(prepared.tokens, prepared.sampling, events.put)
            self.engine.generate(served, sequence)
        except BaseException:
            self.engine.release(served)
            raise
        return Run(served, sequence, events, job.model or self._name_of(served), prepared.shaper(), job.keep_alive)

    async def _stream(self, request: Request, run: Run, poll: bool = False) -> AsyncIterator[Token | Finished]:
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

    async def _collect(self, request: Request, run: Run) -> Collected:
        parts, thought, scores, finished, calls = [], [], [], None, None
        async for event in self._stream(request, run, poll=True):  # to its end, so it closes at once
            if isinstance(event, Token):
                parts.append(event.text)
                scores.extend(event.logprobs)
            elif isinstance(event, Reasoning):
                thought.append(event.text)
            elif isinstance(event, ToolCalls):
                calls = event
            else:
                finished = event
        text = calls.text if calls is not None else "".join(parts)
        return Collected(text, finished, "".join(thought), calls.calls if calls is not None else (), scores)

    async def _start_all(self, request: Request, job: GenerationJob) -> list[Run]:
        """The job's n answers, each its own sequence (a given seed counts up from the first)."""
        runs: list[Run] = []
        try:
            for index in range(job.n):
                seed = job.sampling.seed
                runs.append(await self._start(request, job if index == 0 or seed is None else
                                              replace(job, sampling=replace(job.sampling, seed=(seed + index) % 2**32))))
        except BaseException:
            for run in runs:
                run.sequence.cancel()
                self.engine.release(run.served)
            raise
        return runs

    async def _collect_all(self, request: Request, runs: list[Run]) -> list[Collected]:
        tasks = [asyncio.ensure_future(self._collect(request, run)) for run in runs]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:  # after a failure, the others' sequences end too
                task.cancel()

    async def _merged(self, request: Request, runs: list[Run]) -> AsyncIterator[tuple[int, Event]]:
        """(answer's index, event) from all of the runs, as they come."""
        if len(runs) == 1:
            async for event in self._stream(request, runs[0]):
                yield 0, event
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(index: int, run: Run) -> None:
            try:
                async for event in self._stream(request, run):
                    queue.put_nowait((index, event))
                queue.put_nowait((index, None))
            except Exception as exc:  # handed to the reader, which raises it
                queue.put_nowait((index, exc))

        tasks = [asyncio.ensure_future(pump(i, run)) for i, run in enumerate(runs)]
        try:
            left = len(runs)
            while left:
                index, item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                if item is None:
                    left -= 1
                else:
                    yield index, item
        finally:
            for task in tasks:
                task.cancel()

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
