"""vLLM for scale-out: the command that runs a checkpoint across GPUs and nodes, chosen from the
plan, and the process that runs it. vLLM lives in its own environment (it pins its own torch and
transformers) and is never a dependency; `serve --engine vllm` talks to it over its OpenAI API
(remote.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ...errors import ModelLoadError, UsageError

INSTALL_HINT = ("vLLM was not found: install it in its own environment (python -m venv ~/.vllm && "
                "~/.vllm/bin/pip install vllm) and pass --vllm ~/.vllm/bin/vllm")
MAX_MEMORY_SHARE = 0.95


@dataclass(frozen=True)
class VllmPlan:
    tensor_parallel: int
    pipeline_parallel: int
    max_model_len: int
    memory_share: float
    command: tuple[str, ...]


def plan_vllm(executable: str, model: str, served_name: str, n_head: int, n_head_kv: int, gpus: list[tuple[int, int]],
              nodes: int, n_ctx: int, host: str, port: int, margin: int = 0) -> VllmPlan:
    """gpus: (free, total) bytes of each GPU of one node (every node alike, as vLLM assumes).

    Tensor parallelism within a node, over the most GPUs (a power of two) that divide the
    attention heads; pipeline parallelism over what is left and across nodes. vLLM takes its
    memory share of each GPU's total, so the share is what the least free GPU can give.
    """
    if not gpus:
        raise UsageError("vLLM needs NVIDIA GPUs; none is visible (localllm hw lists what is here)")
    if nodes < 1:
        raise UsageError("--nodes must be at least 1")
    tensor = 1
    while tensor * 2 <= len(gpus) and n_head % (tensor * 2) == 0 and (n_head_kv % (tensor * 2) == 0 or tensor * 2 % n_head_kv == 0):
        tensor *= 2
    pipeline = (len(gpus) // tensor) * nodes
    share = min(MAX_MEMORY_SHARE, min((free - margin) / total for free, total in gpus))
    share = int(share * 100) / 100
    if share <= 0.1:
        raise UsageError(f"the GPUs have too little free memory for vLLM (at most {share:.0%} of one)")
    command = [executable, "serve", model, "--served-model-name", served_name, "--host", host, "--port", str(port),
               "--tensor-parallel-size", str(tensor), "--pipeline-parallel-size", str(pipeline),
               "--max-model-len", str(n_ctx), "--gpu-memory-utilization", f"{share:.2f}"]
    if nodes > 1:
        command += ["--distributed-executor-backend", "ray"]  # the Ray cluster spans the nodes
    return VllmPlan(tensor, pipeline, n_ctx, share, tuple(command))


def find_vllm(given: str | None) -> str:
    if given:
        path = Path(given).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise UsageError(f"--vllm {given}: not an executable file")
        return str(path)
    found = shutil.which("vllm")
    if found is None:
        raise UsageError(INSTALL_HINT)
    return found


def start(plan: VllmPlan, url: str, timeout: float = 900) -> subprocess.Popen:
    """Start vLLM and wait until its API answers (loading a large model takes minutes)."""
    from ...hub import http_client

    httpx = http_client()  # huggingface_hub's own client (httpx, or httpx2 from version 2)

    sys.stderr.write("localllm: starting vLLM: " + " ".join(plan.command) + "\n")
    proc = subprocess.Popen(plan.command, stdout=sys.stderr, stderr=sys.stderr)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ModelLoadError(plan.command[2], f"vLLM exited with code {proc.returncode} (its log is above)")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.terminate()
    raise ModelLoadError(plan.command[2], f"vLLM did not answer within {timeout:.0f} s")
