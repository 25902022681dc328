"""`localllm rpc-worker`, and the `--rpc` option of the commands that load GGUF models."""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading

import click

from .errors import LocalLLMError, UsageError
from .rpc import DEFAULT_PORT, NO_AUTH_WARNING


def _parse(_ctx, _param, value):
    from .rpc import parse_endpoints

    return parse_endpoints(value) if value else ()


rpc_option = click.option(
    "--rpc", callback=_parse, metavar="HOST:PORT,...",
    help="Put layers on these llama.cpp RPC workers (`localllm rpc-worker` on other machines), as many as "
         "their free memory holds, before this machine's GPUs and CPU. GGUF models only.",
)


@click.command("rpc-worker", context_settings={"show_default": True})
@click.option("--host", default="127.0.0.1", help="IPv4 address to listen on; 0.0.0.0 for every interface (see the warning below).")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, help="TCP port.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads, when the CPU is what is served.  [default: physical cores]")
@click.option("--cache", "use_cache", is_flag=True, help="Keep received weights on disk (in localllm's cache) so a client's next load sends only their hashes.")
def rpc_worker(host, port, threads, use_cache):
    """Lend this machine's GPUs (or, without one, its CPU) to localllm or llama.cpp on other machines.

    \b
      localllm rpc-worker --host 0.0.0.0           # on each worker
      localllm run -m qwen3:8b --rpc 10.0.0.2:50052,10.0.0.3:50052 "Hello"

    RPC has no authentication or encryption: listen on a trusted network only. Both sides must
    run the same llama.cpp version. One client at a time; Ctrl-C stops the worker.
    """
    from . import crash, rpc
    from .config import cache_dir
    from .hardware import default_threads

    crash.install()
    rpc.check_listen_host(host)
    if not ipaddress.IPv4Address(host).is_loopback:
        click.echo(f"localllm: warning: {NO_AUTH_WARNING}", err=True)
    _check_port_free(host, port)
    rpc.bindings()
    cache = cache_dir() / "rpc" if use_cache else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    failed: list[BaseException] = []

    def work() -> None:
        try:
            rpc.serve(host, port, threads or default_threads(), cache)
        except BaseException as exc:  # reported by the main thread, which is waiting on this one
            failed.append(exc)

    # ggml's server loop never returns while it listens; a thread of its own keeps Ctrl-C working.
    worker = threading.Thread(target=work, name="rpc-worker", daemon=True)
    worker.start()
    click.echo(f"localllm: RPC worker on {host}:{port} (Ctrl-C stops it)", err=True)
    while worker.is_alive():
        worker.join(0.5)
    if failed and isinstance(failed[0], LocalLLMError):
        raise failed[0]
    raise click.ClickException(f"the RPC worker could not listen on {host}:{port} (is the port taken?)")


def _check_port_free(host: str, port: int) -> None:
    """ggml's server only says it failed; binding here first names the reason."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ggml's server sets it
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = "the port is in use; choose another with --port" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise UsageError(f"cannot listen on {host}:{port}: {reason}") from None
