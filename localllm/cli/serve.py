"""`localllm serve`: the command; the server itself is in localllm/server (imported only here)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..errors import UsageError
from ..options import (
    ALLOWED_HOSTS_ENV,
    FLASH_ATTN,
    ORIGINS_ENV,
    parse_duration,
)
from .options import draft_option, option
from .rpc import rpc_option

DEFAULT_PORT = 8642  # none of Ollama's 11434, LM Studio's 1234, llama-server's 8080, vLLM's 8000
DEFAULT_PARALLEL = 4  # as llama-server and LM Studio
@click.command(context_settings={"show_default": True})
@click.option("-m", "--model", metavar="MODEL", help="Load this model at start (any reference `run -m` takes); requests may name others, loaded on demand.")
@click.option("--host", default="127.0.0.1", help="Address to listen on. Anything but loopback needs an API key.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, help="Port (0: any free one).")
@option("n_seq", default=DEFAULT_PARALLEL)
@click.option("--queue", "queue_limit", type=click.IntRange(0, 10_000), default=64, help="Requests that may wait for a slot; past this they get 503.")
@click.option("--keep-alive", default="5m", metavar="DURATION", help="Unload a model unused this long (5m, 30s, 1h; -1: never).")
@click.option("--api-key-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE", help="Require 'Authorization: Bearer KEY' on every request, KEY being this file's first line.  [default: none]")
@click.option("--api-key", envvar="LOCALLLM_API_KEY", show_envvar=True, metavar="KEY", help="The key itself (prefer --api-key-file or the variable: an argument is visible to every user in `ps`).")
@click.option("--cors", multiple=True, metavar="ORIGIN", help=f"Let web pages from this origin use the server (repeatable; also ${ORIGINS_ENV}, comma-separated; * for any). Pages on localhost are allowed; every other origin gets 403.  [default: none]")
@click.option("--allowed-hosts", multiple=True, metavar="NAME", help=f"Answer requests addressed to this host name (repeatable; also ${ALLOWED_HOSTS_ENV}; * for any). localhost and loopback addresses always are; others get 403, which stops DNS rebinding.  [default: none]")
@click.option("--allow-model-paths", is_flag=True, help="Let clients name model files by path on this machine. Without it they choose among installed models (`localllm list`) only.")
@option("n_ctx", help="Context window per request, in tokens; 0 for the model's trained length.", shown_default="the trained length, at most 4096")
@option("n_threads", shown_default="physical cores")
@option("n_gpu_layers", shown_default="as many as fit")
@option("kv_type", shown_default="f16, q8_0 when memory is tight")
@click.option("--flash-attn", type=click.Choice(list(FLASH_ATTN)), default="auto", help="Flash attention.")
@option("speculation", default="auto")
@draft_option
@option("engine", help="Backend for every model served; vllm starts vLLM on -m (a safetensors checkpoint) and serves through it.", shown_default="from each model's format")
@click.option("--vllm", "vllm_path", metavar="PATH", help="The vllm executable (of its own environment).  [default: vllm on PATH]")
@click.option("--vllm-url", metavar="URL", help="Serve through a vLLM (or other OpenAI-compatible engine) already running there, instead of starting one.")
@click.option("--nodes", type=click.IntRange(1, 64), default=1, help="Machines in vLLM's Ray cluster (started beforehand: see README).")
@option("dtype", shown_default="the checkpoint's where native, else float32")
@rpc_option
@click.option("--no-cache", is_flag=True, help="Keep no prompt states on disk. By default each slot's KV cache is saved when the server is idle, and a request that starts the same as a saved one (a long system prompt, a conversation resent with one more turn) loads it after its slot was reused or the server restarted.")
@click.option("--no-store", is_flag=True, help="Keep no responses of the Responses API (/v1/responses): clients then send the whole conversation, and previous_response_id is refused. By default a response is kept in memory for an hour after its last use (at most 1024 of them, 64 MiB), for the next turn to name it.")
@click.option("--allow-image-urls", is_flag=True, help="Fetch images that requests name by http(s) URL (OpenAI's image_url parts): at most 20 MiB each, in 20 s. Off by default: localllm works offline, and a fetch is a request made on a client's behalf; data: URLs always work.")
@click.option("--max-body", type=click.IntRange(1, 1024), default=8, metavar="MIB", help="Largest request body accepted.")
@click.option("-q", "--quiet", is_flag=True, help="No access log (one line per request on stderr).")
@click.option("-v", "--verbose", is_flag=True, help="Show llama.cpp's own log on stderr.")
def serve(model, host, port, parallel, queue_limit, keep_alive, api_key_file, api_key, cors, allowed_hosts, allow_model_paths,
          ctx, threads, gpu_layers, kv_type, flash_attn, spec, draft, engine, vllm_path, vllm_url, nodes, dtype, rpc, no_cache, no_store,
          allow_image_urls, max_body, quiet, verbose):
    """Serve models over HTTP: OpenAI's API (/v1/chat/completions, /v1/responses, /v1/completions,
    /v1/models, /v1/embeddings), Anthropic's (/v1/messages, /v1/messages/count_tokens), Ollama's
    (/api/chat, /api/generate, /api/embed, /api/tags, /api/show, /api/ps, /api/pull, /api/copy,
    /api/delete), /health and Prometheus' /metrics.

    \b
      localllm serve -m starter
      curl http://127.0.0.1:8642/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "starter", "messages": [{"role": "user", "content": "Hi"}]}'

    Up to --parallel requests generate at once; a chat's next turn reuses the cached prompt.
    Ctrl-C or SIGTERM lets running answers finish (3 s at most), then unloads and exits.

    Web pages in your browser can reach 127.0.0.1 too: requests addressed to another host name,
    from another web origin, or whose body is not 'Content-Type: application/json' are refused.
    """
    from .. import crash
    from ..engine import Engine
    from ..options import LoadOptions
    from ..registry import find_installed
    from ..server import Listen, ServerConfig, check_exposure
    from ..server import serve as run_server
    from ..server.guard import split_names

    crash.install()
    if click.get_current_context().get_parameter_source("api_key") == click.core.ParameterSource.COMMANDLINE:
        click.echo("localllm: warning: --api-key is visible to every user of this machine in `ps`; "
                   "use --api-key-file or LOCALLLM_API_KEY", err=True)
    api_key = _api_key(api_key_file, api_key)
    check_exposure(host, api_key)
    served = find_installed(model) if model is not None else None  # a typo fails now, not once serving
    draft = str(find_installed(draft).path) if draft else None
    options = LoadOptions(n_ctx=ctx, n_threads=threads, n_gpu_layers=gpu_layers, kv_type=kv_type,
                          flash_attn=FLASH_ATTN[flash_attn], n_seq=parallel, engine=engine, dtype=dtype, rpc=rpc,
                          prompt_cache="" if no_cache else "live", speculation=spec, draft=draft, verbose=verbose)
    config = ServerConfig(load_options=options, default_model=model, api_key=api_key, max_body=max_body * 2**20,
                          quiet=quiet, cors=split_names(cors, ORIGINS_ENV), allowed_hosts=split_names(allowed_hosts, ALLOWED_HOSTS_ENV),
                          bind_host=host, allow_paths=allow_model_paths, served=served,
                          store_responses=not no_store, allow_image_urls=allow_image_urls)
    os.environ.pop("LOCALLLM_API_KEY", None)  # nothing started from here needs to see it
    if engine == "vllm":
        from ..server.vllm_engine import remote_engine

        served, stop = remote_engine(model, options, vllm_path, vllm_url, nodes, queue_limit)
        try:
            run_server(config, Listen(host, port), served, model)
        finally:
            stop()
        return
    run_server(config, Listen(host, port), Engine(keep_alive=parse_duration(keep_alive), queue_limit=queue_limit), model)


MAX_KEY_FILE = 4096


def _api_key(key_file: Path | None, key: str | None) -> str | None:
    """The key from --api-key-file, else from --api-key or LOCALLLM_API_KEY; never empty."""
    if key_file is not None:
        if key is not None:
            raise UsageError("give the API key once: --api-key-file, or --api-key / LOCALLLM_API_KEY")
        try:
            with open(key_file, "rb") as f:
                data = f.read(MAX_KEY_FILE + 1)
        except OSError as exc:
            raise UsageError(f"cannot read the API key file {key_file}: {exc.strerror}") from None
        if len(data) > MAX_KEY_FILE:
            raise UsageError(f"the API key file {key_file} is larger than {MAX_KEY_FILE} bytes: is it the right file?")
        lines = data.decode("utf-8", "replace").splitlines()
        key = lines[0] if lines else ""
        where = f"the API key file {key_file}"
    else:
        where = "the API key"
    if key is None:
        return None
    key = key.strip()
    if not key or not key.isprintable() or not key.isascii():
        raise UsageError(f"{where} is empty or holds characters a header cannot carry")
    return key
