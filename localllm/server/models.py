"""What the model-listing endpoints say about installed and loaded models, in each API's shape."""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timezone
from pathlib import Path

from ..config import cache_dir
from ..engine import Served
from ..errors import ModelNotFoundError, UsageError
from ..printable import printable
from ..registry import InstalledModel, display_name, find_installed
from .schemas import ApiError


def _modified(path: Path) -> datetime:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
    except OSError:
        return datetime.fromtimestamp(0, timezone.utc)


def _digest(path: Path) -> str:
    """A stable identifier of the file (not its content hash, which would mean reading it)."""
    return hashlib.sha256(str(path.absolute()).encode()).hexdigest()


def openai_entry(model: InstalledModel) -> dict:
    return {"id": model.name, "object": "model", "created": int(_modified(model.path).timestamp()), "owned_by": model.source}


def _details(model: InstalledModel) -> dict:
    from ..gguf_info import header_facts

    try:
        family = header_facts(model.path, cache_dir())["architecture"]
    except Exception:  # a listing never fails for one unreadable file
        family = ""
    return {"format": "gguf", "family": family, "families": [family] if family else None,
            "parameter_size": "", "quantization_level": model.quant or ""}


def ollama_entry(model: InstalledModel) -> dict:
    return {"name": model.name, "model": model.name, "modified_at": _modified(model.path).isoformat(),
            "size": model.size, "digest": _digest(model.path), "details": _details(model)}


def not_found(name: str) -> ApiError:
    """The same answer for every model a client may not use, whatever is on the server's disk."""
    return ApiError(404, f"no model named {printable(name)[:200]!r} is served here (GET /v1/models lists them)",
                    "model", "not_found_error")


def find(name: str, allow_paths: bool) -> InstalledModel:
    """The installed model a client names (by path too, if the server allows paths), or a 404."""
    try:
        return find_installed(name, allow_paths)
    except (ModelNotFoundError, UsageError):
        raise not_found(name) from None


def served_ref(name: str, allow_paths: bool) -> str:
    """What the engine should load for a model a client names: the file's path, once it is known
    to be one the client may use."""
    return str(find(name, allow_paths).path)


def ollama_show(name: str, allow_paths: bool) -> dict:
    from ..model import inspect

    model = find(name, allow_paths)
    spec = inspect(model.path)
    details = _details(model)
    info = {"general.architecture": spec.architecture, f"{spec.architecture}.context_length": spec.n_ctx_train,
            f"{spec.architecture}.block_count": spec.n_layer, f"{spec.architecture}.embedding_length": spec.n_embd}
    return {"modelfile": "", "parameters": "", "template": "", "details": details, "model_info": info,
            "capabilities": ["completion"], "modified_at": _modified(model.path).isoformat()}


def ollama_running(served: Served, keep_alive: float | None) -> dict:
    path = served.path
    left = served.last_used + keep_alive - time.monotonic() if keep_alive is not None else 10 * 365 * 86400
    expires = datetime.now(timezone.utc).timestamp() + max(0.0, left)
    name = display_name(path)
    model = InstalledModel(name, path, path.stat().st_size if path.exists() else 0, "path")
    return {"name": name, "model": name, "size": model.size, "digest": _digest(path),
            "details": _details(model), "expires_at": datetime.fromtimestamp(expires, timezone.utc).isoformat(),
            "size_vram": 0}
