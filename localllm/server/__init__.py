"""`localllm serve`: an OpenAI- and Ollama-compatible HTTP API over the engine.

Imported only by `serve`, so the rest of the CLI never pays for Starlette and uvicorn. Starlette
on uvicorn: both maintained, pure Python besides uvicorn's optional speedups, two packages in
all (aiohttp would add seven), and Starlette's streaming responses notice a client that hangs up.
"""

from __future__ import annotations

import socket
import sys
import threading
from dataclasses import dataclass

from ..engine import Engine
from ..errors import UsageError
from .app import ServerConfig, create_app
from .guard import is_loopback

# On Ctrl-C or SIGTERM running answers may finish for this long; then they are stopped (each
# stream ends with an error event), and uvicorn closes what is left a little later.
FINISH_S = 3
GRACEFUL_SHUTDOWN_S = FINISH_S + 2


@dataclass(frozen=True)
class Listen:
    host: str
    port: int


def check_exposure(host: str, api_key: str | None) -> None:
    if not is_loopback(host) and not api_key:
        raise UsageError(f"--host {host} would let other machines use this server: give an API key with --api-key "
                         "or LOCALLLM_API_KEY (clients send it as 'Authorization: Bearer KEY')")


def bind(listen: Listen) -> socket.socket:
    """The listening socket, bound before anything else starts, so a taken port is one clear line."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((listen.host.strip("[]"), listen.port))
    except OSError as exc:
        sock.close()
        reason = "the port is in use (another server?); choose one with --port" if exc.errno == 98 else exc.strerror
        raise UsageError(f"cannot listen on {listen.host}:{listen.port}: {reason}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(config: ServerConfig, listen: Listen, engine: Engine, preload: str | None) -> None:
    import uvicorn

    sock = bind(listen)
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    port = sock.getsockname()[1]

    async def lifespan(app):
        if preload is not None:
            future = engine.acquire(preload, config.load_options)
            future.add_done_callback(lambda f: _preloaded(f, engine))
        yield
        engine.shutdown(wait=True)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if not self.should_exit:
                timer = threading.Timer(FINISH_S, engine.cancel_all)
                timer.daemon = True
                timer.start()
            super().handle_exit(sig, frame)

    app = create_app(config, engine)
    server = Server(uvicorn.Config(
        _Lifespan(app, lifespan), log_level="warning", access_log=False, lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, server_header=False,
    ))
    sys.stderr.write(f"localllm: serving on http://{host}:{port} (OpenAI API under /v1, Ollama API under /api); "
                     "Ctrl-C stops\n")
    sys.stderr.flush()
    try:
        server.run(sockets=[sock])
    finally:
        engine.shutdown(wait=True)
        sock.close()


def _preloaded(future, engine: Engine) -> None:
    if future.exception() is not None:
        sys.stderr.write(f"localllm: the model did not load: {future.exception()}\n")
        return
    engine.release(future.result())


class _Lifespan:
    """Runs `lifespan` (an async generator) around the app's life, as ASGI's lifespan protocol asks."""

    def __init__(self, app, lifespan):
        self.app, self.lifespan = app, lifespan

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        steps = self.lifespan(self.app)
        await receive()
        await steps.__anext__()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        try:
            await steps.__anext__()
        except StopAsyncIteration:
            pass
        await send({"type": "lifespan.shutdown.complete"})
