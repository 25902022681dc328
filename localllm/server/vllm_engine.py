"""`serve --engine vllm`: start vLLM on a checkpoint (or use one already running) and give the
server an engine whose one model answers through it."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from dataclasses import replace

from ..engine import Engine
from ..errors import UsageError
from ..options import LoadOptions


def remote_engine(ref: str | None, options: LoadOptions, vllm_path: str | None, url: str | None, nodes: int,
                  queue_limit: int) -> tuple[Engine, Callable[[], None]]:
    from ..backends.vllm.remote import RemoteBackend
    from ..formats import is_checkpoint
    from ..model import Model
    from ..registry import resolve

    if ref is None:
        raise UsageError("--engine vllm needs -m: a safetensors checkpoint (a folder or an installed one)")
    path = resolve(ref).absolute()
    if not is_checkpoint(path):
        raise UsageError(f"vLLM serves safetensors checkpoints; {path.name} is not one (config.json and *.safetensors)")
    proc: subprocess.Popen | None = None
    if url is None:
        url, proc = _start_vllm(path, options, vllm_path, nodes)
    backend = RemoteBackend(url)

    def load(model_path, load_options):
        if model_path != path:
            raise UsageError(f"this server serves {path.name} through vLLM, and no other model")
        return Model(backend.load(model_path, load_options), replace(load_options, engine="vllm"), 0.0)

    def stop() -> None:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(60)

    return Engine(keep_alive=None, queue_limit=queue_limit, loader=load), stop


def _start_vllm(path, options: LoadOptions, vllm_path: str | None, nodes: int):
    from ..backends import this_machine
    from ..backends.transformers.checkpoint_plan import read_local
    from ..backends.vllm.plan import find_vllm, plan_vllm, start

    executable = find_vllm(vllm_path)
    spec = read_local(path)
    gpus = [(g.free, g.total) for g in this_machine().gpus if g.vendor == "nvidia" and g.free and g.total]
    with socket.socket() as probe:  # a free loopback port for vLLM, which only this server talks to
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    n_ctx = options.n_ctx or min(spec.n_ctx_train, 32768)
    plan = plan_vllm(executable, str(path), path.name, spec.n_head, spec.n_head_kv, gpus, nodes, n_ctx, "127.0.0.1", port)
    url = f"http://127.0.0.1:{port}"
    return url, start(plan, url)
