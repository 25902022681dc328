"""Inference backends. Each is imported only when used, so the CLI starts fast."""

from __future__ import annotations

from .base import Backend, LoadedModel, Message

__all__ = ["Backend", "LoadedModel", "Message", "get_backend"]


def get_backend(name: str = "llamacpp") -> Backend:
    if name == "llamacpp":
        from .llamacpp import LlamaCppBackend

        return LlamaCppBackend()
    raise ValueError(f"unknown backend {name!r}")
