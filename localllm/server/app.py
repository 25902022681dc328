"""The ASGI app behind `localllm serve`: the routes of each API (OpenAI's chat, completions and
Responses, Anthropic's Messages, Ollama's) over one engine and one request path, behind the
guards (Host and Origin, API key, CORS), the access log and the request counter."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..engine import Engine
from ..printable import printable
from .anthropic_api import AnthropicRoutes
from .core import ServerConfig, error_response
from .guard import LOOPBACK_ORIGIN_REGEX, Auth, Guard
from .metrics import CountRequests, Metrics
from .ollama_api import OllamaRoutes
from .openai_api import OpenAIRoutes
from .responses_api import ResponsesRoutes
from .schemas import ApiError

__all__ = ["ServerConfig", "create_app"]


class _Api(OpenAIRoutes, ResponsesRoutes, AnthropicRoutes, OllamaRoutes):
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
        Route("/v1/responses", api.responses_create, methods=["POST"]),
        Route("/v1/responses/{id}", api.responses_get, methods=["GET"]),
        Route("/v1/responses/{id}", api.responses_delete, methods=["DELETE"]),
        Route("/v1/messages", api.anthropic_messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", api.anthropic_count_tokens, methods=["POST"]),
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
    app = Auth(app, config.api_key, lambda path, error: error_response(path, error))
    app = CORSMiddleware(app, allow_origins=list(config.cors), allow_origin_regex=LOOPBACK_ORIGIN_REGEX,
                         allow_methods=["GET", "POST", "OPTIONS"], allow_headers=["authorization", "content-type", "x-api-key", "anthropic-version", "anthropic-beta"])
    app = Guard(app, config.policy, lambda scope, status, message: error_response(scope["path"], ApiError(status, message)))
    api.metrics = Metrics(engine, routes)
    return CountRequests(_AccessLog(app, config.quiet), api.metrics)


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(request.url.path, ApiError(404, f"no such endpoint: {printable(request.url.path)[:200]}"))


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return error_response(request.url.path, ApiError(405, f"{request.method} is not allowed here"))


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
