"""`localllm rpc-worker`, and the `--rpc` option of the commands that load GGUF models."""

from __future__ import annotations

import errno
import ipaddress
import signal
import socket
import sys

import click

from ..backends.llamacpp.rpc import DEFAULT_PORT, NO_AUTH_WARNING
from ..errors import UsageError
from .options import option


def _parse(_ctx, _param, value):
    from ..backends.llamacpp.rpc import parse_endpoints

    return parse_endpoints(value) if value else ()


rpc_option = click.option(
    "--rpc", callback=_parse, metavar="HOST:PORT,...",
    help="Put layers on these llama.cpp RPC workers (`localllm rpc-worker` on other machines), as many as "
         "their free memory holds, before this machine's GPUs and CPU. GGUF models only.",
)


@click.command("rpc-worker", context_settings={"show_default": True})
@click.option("--host", default="127.0.0.1", help="IPv4 address to listen on; another than loopback needs --expose-unauthenticated.")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, help="TCP port.")
@option("n_threads", help="CPU threads, when the CPU is what is served.", shown_default="physical cores")
@click.option("--cache", "use_cache", is_flag=True, help="Keep received weights on disk (in localllm's cache) so a client's next load sends only their hashes.")
@click.option("--idle-timeout", type=click.IntRange(5, 86_400), default=600, metavar="SECONDS", help="Close a client's connection after this long without a request (sooner, after 5 s, when another client is waiting).")
@click.option("--expose-unauthenticated", is_flag=True, help="Allow a --host other machines can reach, knowing that RPC has no authentication or encryption.")
def rpc_worker(host, port, threads, use_cache, idle_timeout, expose_unauthenticated):
    """Lend this machine's GPUs (or, without one, its CPU) to localllm or llama.cpp on other machines.

    \b
      localllm rpc-worker --host 0.0.0.0 --expose-unauthenticated   # on each worker
      localllm run -m qwen3:8b --rpc 10.0.0.2:50052,10.0.0.3:50052 "Hello"

    RPC has no authentication or encryption: listen on a trusted network only. Both sides must
    run the same llama.cpp version. One client at a time; Ctrl-C stops the worker.

    llama.cpp's RPC server runs in a child process, restarted if it dies; every request is
    checked before it reaches it (sizes above the free memory, unknown commands and silent
    connections are refused).
    """
    from .. import crash
    from ..backends.llamacpp import rpc, rpc_guard
    from ..config import cache_dir
    from ..hardware import default_threads

    crash.install()
    rpc.check_listen_host(host)
    if not ipaddress.IPv4Address(host).is_loopback:
        if not expose_unauthenticated:
            raise UsageError(f"--host {host} lets other machines use this one's memory and compute with no password: "
                             "add --expose-unauthenticated if this network is trusted")
        click.echo(f"localllm: warning: {NO_AUTH_WARNING}", err=True)
    listener = _listen(host, port)
    rpc.bindings()  # fails here, in one line, when there is no RPC support to run
    cache = cache_dir() / "rpc" if use_cache else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        click.echo(f"localllm: rpc-worker: {message}", err=True)

    worker = rpc_guard.Worker(threads or default_threads(), cache, log)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # through `finally`, which stops the child
    try:
        worker.ensure()
        click.echo(f"localllm: RPC worker on {host}:{port} (Ctrl-C stops it)", err=True)
        rpc_guard.serve(listener, worker, idle_timeout, log)
    finally:
        worker.stop()
        listener.close()


def _listen(host: str, port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        reason = "the port is in use; choose another with --port" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise UsageError(f"cannot listen on {host}:{port}: {reason}") from None
    listener.listen(16)
    return listener
