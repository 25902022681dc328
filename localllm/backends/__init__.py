"""Inference backends. Each is imported only when used, so the CLI starts fast."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..hardware import BuildInfo, DeviceInfo, HardwareProfile, detect
from .base import Backend, Capabilities, LoadedModel, Message

__all__ = ["Backend", "Capabilities", "LoadedModel", "Message", "backend_for", "build_info", "get_backend", "this_machine"]


def get_backend(name: str = "llamacpp") -> Backend:
    """A backend by name; adding one is a module and a line here."""
    if name == "llamacpp":
        from .llamacpp import LlamaCppBackend

        return LlamaCppBackend()
    if name == "transformers":
        from .transformers_engine import TransformersBackend

        return TransformersBackend()
    if name == "vllm":
        raise UsageError("vLLM serves through `localllm serve --engine vllm`, not one prompt at a time")
    raise UsageError(f"unknown engine {name!r} (llamacpp or transformers)")


def backend_for(path: Path, engine: str | None = None) -> Backend:
    """The backend for a model: the one asked for, else the one its format needs (a safetensors
    folder: transformers; anything else: llama.cpp, whose checks then name what is wrong)."""
    from .transformers_engine import is_checkpoint

    name = engine or ("transformers" if is_checkpoint(path) else "llamacpp")
    backend = get_backend(name)
    if not backend.can_load(path):
        what = "a safetensors folder (config.json and *.safetensors)" if path.is_dir() else "a .gguf file"
        raise UsageError(f"the {name} engine cannot load {what}: {path.name}")
    return backend


def build_info() -> BuildInfo:
    """What the installed llama.cpp build can run on (imports llama_cpp)."""
    from . import amx
    from .llamacpp_runtime import devices, supports_gpu_offload

    found = tuple(DeviceInfo(*d) for d in devices())
    # llama.cpp counts RPC workers as GPUs; gpu_offload means this machine's own.
    local_gpu = supports_gpu_offload() and (not any(d.remote for d in found)
                                            or any(d.kind in ("gpu", "igpu") and not d.remote for d in found))
    return BuildInfo(local_gpu, found, amx.status())


def this_machine() -> HardwareProfile:
    """This machine as the planner sees it: CPU, memory, GPUs, and what the llama.cpp build can use."""
    return detect(build_info())
