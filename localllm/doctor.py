"""`localllm doctor`: is this installation sound, and does the GPU really do the work?

Gathering (``gather``) and judging (``judge``) are apart: ``judge`` takes a ``Situation`` of
plain readings, so the tests replay recorded machines through the same rules the command runs.
Each finding has a status (ok, warn, error) and, unless ok, the one command or setting that
fixes it. The load check runs the starter in a child process: a llama.cpp that crashes (an AMX
SIGILL, a driver fault) is a finding, not the end of the doctor.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .backends.llamacpp.estimate import MIB
from .errors import LocalLLMError
from .hardware import GpuInfo

LOW_DISK = 10 * 2**30  # below this, most models no longer fit in the store
NO_DISK = 2**30
HUB_TIMEOUT = 3.0
# A build flag per GPU vendor, and the registry name its ggml backend has.
GPU_BUILDS = {"nvidia": ("CUDA", "-DGGML_CUDA=on"), "amd": ("ROCm", "-DGGML_HIP=on"),
              "intel": ("Vulkan", "-DGGML_VULKAN=on"), "apple": ("Metal", "")}
GPU_BACKENDS = ("CUDA", "ROCm", "HIP", "Metal", "MTL", "Vulkan", "SYCL", "OpenCL")
REINSTALL = ('CMAKE_ARGS="{flag}" pip install --no-cache-dir --force-reinstall llama-cpp-python=={version} '
             "(with pipx: pipx runpip localllm install ...); see packaging/README.md")


class ProblemsFound(LocalLLMError):
    """doctor found something broken; each finding above names its fix."""

    exit_code = 11


@dataclass(frozen=True)
class Finding:
    check: str
    status: str  # "ok", "warn", "error"
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class LoadCheck:
    """The starter run once with every layer offloaded and once on the CPU, in child processes."""

    ok: bool
    detail: str = ""  # the child's error line when not ok
    gpu_tokens_per_s: float | None = None
    cpu_tokens_per_s: float | None = None
    gpu_memory_grew: int | None = None  # bytes of GPU memory the offloaded run took


@dataclass(frozen=True)
class Situation:
    versions: dict
    backends: tuple[str, ...]  # ggml's registered backends, e.g. ("CPU",) or ("CUDA", "CPU")
    cpu_variant: str  # the CPU kernels in use: a portable build's variant, or the native build's features
    gpus: tuple[GpuInfo, ...]
    disk_free: int | None
    store: str
    hub: str  # "ok", "offline" (HF_HUB_OFFLINE), or why it is unreachable
    threads: int
    physical_cores: int | None
    starter: str | None  # its path, None when not installed
    load: LoadCheck | None
    amx: str = ""
    notes: tuple[str, ...] = field(default=())


def judge(s: Situation) -> list[Finding]:
    version = s.versions.get("llama-cpp-python", "0.3.36")
    found = [Finding("versions", "ok", ", ".join(f"{k} {v}" for k, v in s.versions.items()))]
    gpu_backends = [b for b in s.backends if b.startswith(GPU_BACKENDS)]
    found.append(Finding("llama.cpp build", "ok", f"backends: {', '.join(s.backends) or 'none'}; CPU: {s.cpu_variant}"))
    if not s.backends:
        found[-1] = Finding("llama.cpp build", "error", "no ggml backend is loaded: llama.cpp cannot run anything",
                            "reinstall llama-cpp-python: " + REINSTALL.format(flag="", version=version))
    usable = [g for g in s.gpus if not (g.unified and g.vendor != "apple")]
    for gpu in usable:
        backend, flag = GPU_BUILDS.get(gpu.vendor, ("Vulkan", "-DGGML_VULKAN=on"))
        memory = f", {gpu.free // MIB} MiB free of {gpu.total // MIB}" if gpu.total else ""
        if gpu_backends:
            found.append(Finding(f"GPU {gpu.index}", "ok", f"{gpu.name}{memory}: used through {', '.join(gpu_backends)}"))
        else:
            found.append(Finding(f"GPU {gpu.index}", "error",
                                 f"{gpu.name}{memory} sits idle: this llama.cpp build has no {backend} backend",
                                 "rebuild with GPU support: " + REINSTALL.format(flag=flag, version=version)))
    if not usable:
        found.append(Finding("GPU", "ok", "none found; models run on the CPU"))
    found += _judge_load(s, gpu_backends and usable)
    if s.disk_free is not None:
        free = f"{s.disk_free / 2**30:.1f} GiB free for models in {s.store}"
        status = "error" if s.disk_free < NO_DISK else "warn" if s.disk_free < LOW_DISK else "ok"
        found.append(Finding("disk", status, free, "" if status == "ok" else
                             "free space there, or move the store with HF_HOME=/bigger/disk"))
    if s.hub == "ok":
        found.append(Finding("Hugging Face Hub", "ok", "reachable"))
    elif s.hub == "offline":
        found.append(Finding("Hugging Face Hub", "ok", "not asked: HF_HUB_OFFLINE is set (installed models only)"))
    else:
        found.append(Finding("Hugging Face Hub", "warn", f"unreachable: {s.hub}; installed models still run",
                             "check the network or HTTPS_PROXY; or bring models with `localllm pull MODEL --to DIR` "
                             "elsewhere and `localllm add DIR` here"))
    cores = f" of {s.physical_cores} physical cores" if s.physical_cores else ""
    found.append(Finding("threads", "ok", f"{s.threads}{cores} (fewer when other processes keep cores busy; --threads overrides)"))
    if s.amx:
        found.append(Finding("AMX", "ok", s.amx))
    if s.starter is None:
        from .registry import STARTER_INSTALL_HINT

        found.append(Finding("starter model", "warn", "not installed: a fresh install has nothing to chat with offline",
                             STARTER_INSTALL_HINT))
    found += [Finding("note", "warn", note) for note in s.notes]
    return found


def _judge_load(s: Situation, offloading) -> list[Finding]:
    if s.load is None:
        return []
    if not s.load.ok:
        return [Finding("model load", "error", f"the starter did not run: {s.load.detail}",
                        "run `localllm run -m starter -v Hi` for llama.cpp's own log")]
    if not offloading:
        return [Finding("model load", "ok", f"the starter runs on the CPU at {s.load.cpu_tokens_per_s:.0f} tokens/s")]
    grew, gpu, cpu = s.load.gpu_memory_grew, s.load.gpu_tokens_per_s or 0, s.load.cpu_tokens_per_s or 0
    if grew is not None and grew < 16 * MIB:
        return [Finding("GPU offload", "error", f"loading every layer on the GPU took {grew // MIB} MiB of its memory: "
                        "the weights stayed in RAM", "run `localllm run -m starter --gpu-layers -1 -v Hi` and read where llama.cpp puts the layers")]
    if gpu <= cpu:
        return [Finding("GPU offload", "error", f"offloaded {gpu:.0f} tokens/s is not faster than the CPU's {cpu:.0f}",
                        "check the driver (nvidia-smi) and that no other process holds the GPU")]
    memory = f", {grew // MIB} MiB on the GPU" if grew is not None else ""
    return [Finding("GPU offload", "ok", f"the starter decodes at {gpu:.0f} tokens/s offloaded against {cpu:.0f} on the CPU{memory}")]


# --- gathering on this machine -----------------------------------------------------------------


def gather(load: bool, hub: bool) -> Situation:
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__
    from .backends import this_machine
    from .backends.llamacpp.runtime import backend_names, cpu_variant
    from .hardware import default_threads
    from .registry import starter_path

    profile = this_machine()
    versions = {"localllm": __version__}
    for package in ("llama-cpp-python", "torch", "transformers"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    versions["python"] = platform.python_version()
    versions["os"] = f"{platform.system()} {platform.release()}"
    store, disk_free = _store_disk()
    starter = starter_path()
    backends = tuple(backend_names())
    offload = any(b.startswith(GPU_BACKENDS) for b in backends) and profile.offload_gpus
    return Situation(
        versions=versions, backends=backends, cpu_variant=cpu_variant(), gpus=profile.gpus,
        disk_free=disk_free, store=str(store), hub=check_hub() if hub else "offline",
        threads=default_threads(profile.cpu), physical_cores=profile.cpu.physical_cores,
        starter=str(starter) if starter else None,
        load=load_check(bool(offload)) if load and starter else None,
        amx=profile.build.amx.describe() if profile.build and profile.build.amx and profile.build.amx.present else "",
        notes=profile.notes,
    )


def _store_disk() -> tuple[Path, int | None]:
    from huggingface_hub import constants

    from .hub import free_disk

    store = Path(constants.HF_HUB_CACHE)
    try:
        return store, free_disk(store)
    except OSError:
        return store, None


def check_hub() -> str:
    """"ok", "offline", or why the Hub did not answer: one request, a short timeout, no retries."""
    from huggingface_hub import constants

    from .hub import endpoint, http_client

    httpx = http_client()  # huggingface_hub's own client (httpx, or httpx2 from version 2)
    if constants.HF_HUB_OFFLINE:
        return "offline"
    try:
        response = httpx.get(f"{endpoint()}/api/models", params={"limit": 1}, timeout=HUB_TIMEOUT)
    except httpx.TimeoutException:
        return f"no answer within {HUB_TIMEOUT:g} s"
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return "ok" if response.status_code < 500 else f"HTTP {response.status_code}"


def _run_starter(gpu_layers: int) -> tuple[dict | None, str]:
    command = [sys.executable, "-m", "localllm", "run", "-m", "starter", "-t", "0", "--max-tokens", "48",
               "--ignore-eos", "--gpu-layers", str(gpu_layers), "--json", "Count from one to twenty."]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                              env={**os.environ, "LOCALLLM_DEBUG": ""})
    except subprocess.TimeoutExpired:
        return None, "no answer within 300 s"
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        return None, (lines[-1] if lines else f"exit code {proc.returncode}")[:300]
    return json.loads(proc.stdout), ""


def load_check(offload: bool) -> LoadCheck:
    cpu, error = _run_starter(0)
    if cpu is None:
        return LoadCheck(False, error)
    cpu_speed = cpu["timings"]["generation_tokens_per_s"]
    if not offload:
        return LoadCheck(True, cpu_tokens_per_s=cpu_speed)
    with GpuMemoryPeak() as peak:
        gpu, error = _run_starter(-1)
    if gpu is None:
        return LoadCheck(False, f"with every layer on the GPU: {error}", cpu_tokens_per_s=cpu_speed)
    return LoadCheck(True, gpu_tokens_per_s=gpu["timings"]["generation_tokens_per_s"], cpu_tokens_per_s=cpu_speed,
                     gpu_memory_grew=peak.grew)


class GpuMemoryPeak:
    """The most NVIDIA GPU memory in use while the block ran, above what was in use before it
    (NVML, sampled every 50 ms); None without NVML."""

    def __init__(self) -> None:
        self.grew: int | None = None
        self._stop = threading.Event()

    def _used(self) -> int:
        return sum(self._nvml.nvmlDeviceGetMemoryInfo(h).used for h in self._handles)

    def __enter__(self):
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # no NVML, no driver: the speed comparison still tells
            return self
        base = self._used()
        self.grew = 0

        def sample() -> None:
            while not self._stop.wait(0.05):
                self.grew = max(self.grew, self._used() - base)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.grew is not None:
            self._thread.join()
            self._nvml.nvmlShutdown()


def report(findings: list[Finding]) -> list[str]:
    marks = {"ok": "ok  ", "warn": "warn", "error": "FAIL"}
    lines = []
    for f in findings:
        lines.append(f"{marks[f.status]}  {f.check}: {f.detail}")
        if f.fix:
            lines.append(f"      fix: {f.fix}")
    return lines


def as_json(situation: Situation, findings: list[Finding]) -> str:
    return json.dumps({"ok": not any(f.status == "error" for f in findings),
                       "findings": [asdict(f) for f in findings], "situation": asdict(situation)}, indent=2, default=str)

