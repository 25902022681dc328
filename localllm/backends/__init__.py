"""Inference backends. Each is imported only when used, so the CLI starts fast."""

from __future__ import annotations

from ..errors import UsageError
from ..hardware import BuildInfo, DeviceInfo, HardwareProfile, detect
from .base import Backend, LoadedModel, Message

__all__ = ["Backend", "LoadedModel", "Message", "build_info", "get_backend", "this_machine"]


def get_backend(name: str = "llamacpp") -> Backend:
    if name == "llamacpp":
        from .llamacpp import LlamaCppBackend

        return LlamaCppBackend()
    raise UsageError(f"unknown backend {name!r}")


def build_info() -> BuildInfo:
    """What the installed llama.cpp build can run on (imports llama_cpp)."""
    from . import amx
    from .llamacpp import devices, supports_gpu_offload

    return BuildInfo(supports_gpu_offload(), tuple(DeviceInfo(*d) for d in devices()), amx.status())


def this_machine() -> HardwareProfile:
    """This machine as the planner sees it: CPU, memory, GPUs, and what the llama.cpp build can use."""
    return detect(build_info())
