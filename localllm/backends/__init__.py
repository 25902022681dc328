"""Inference backends. Each is imported only when used, so the CLI starts fast."""

from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import UsageError
from ..hardware import BuildInfo, DeviceInfo, HardwareProfile, detect
from .base import Backend, Capabilities, LoadedModel, Message

__all__ = ["Backend", "Capabilities", "LoadedModel", "Message", "backend_for", "build_info", "get_backend", "this_machine"]


# Engine name -> "module:Backend class", imported on first use. A new backend is a folder under
# backends/ and one line here (tests add their scripted one the same way: tests/fake_backend.py).
REGISTRY: dict[str, str] = {
    "llamacpp": "localllm.backends.llamacpp.model:LlamaCppBackend",
    "transformers": "localllm.backends.transformers.engine:TransformersBackend",
}
FALLBACK = "llamacpp"  # takes any file its format checks do not recognise, and names what is wrong


def get_backend(name: str = FALLBACK) -> Backend:
    """A backend by name."""
    if name == "vllm":
        raise UsageError("vLLM serves through `localllm serve --engine vllm`, not one prompt at a time")
    target = REGISTRY.get(name)
    if target is None:
        raise UsageError(f"unknown engine {name!r} ({' or '.join(REGISTRY)})")
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)()


def backend_for(path: Path, engine: str | None = None) -> Backend:
    """The backend for a model: the one asked for, else the first whose format it is (a safetensors
    folder: transformers), else llama.cpp, whose checks then name what is wrong."""
    if engine is None:
        engine = next((name for name in REGISTRY if name != FALLBACK and get_backend(name).can_load(path)), FALLBACK)
    backend = get_backend(engine)
    if not backend.can_load(path):
        what = "a safetensors folder (config.json and *.safetensors)" if path.is_dir() else "a .gguf file"
        raise UsageError(f"the {engine} engine cannot load {what}: {path.name}")
    return backend


def build_info() -> BuildInfo:
    """What the installed llama.cpp build can run on (imports llama_cpp)."""
    from .llamacpp import amx
    from .llamacpp.runtime import devices, supports_gpu_offload

    found = tuple(DeviceInfo(*d) for d in devices())
    # llama.cpp counts RPC workers as GPUs; gpu_offload means this machine's own.
    local_gpu = supports_gpu_offload() and (not any(d.remote for d in found)
                                            or any(d.kind in ("gpu", "igpu") and not d.remote for d in found))
    return BuildInfo(local_gpu, found, amx.status())


def this_machine() -> HardwareProfile:
    """This machine as the planner sees it: CPU, memory, GPUs, and what the llama.cpp build can use."""
    return detect(build_info())
