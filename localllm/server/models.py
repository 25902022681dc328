"""What the model-listing endpoints say about installed and loaded models, in each API's shape."""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timezone
from pathlib import Path

from ..config import cache_dir
from ..engine import Served
from ..errors import ModelNotFoundError, UsageError
from ..gguf_info import ENCODER_ARCHITECTURES
from ..printable import printable
from ..registry import InstalledModel, find_installed, installed_models
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


def ollama_show(model: InstalledModel) -> dict:
    from ..generation.reasoning import thinks
    from ..generation.tools import family
    from ..gguf_header import HeaderError, scan_file
    from ..model import inspect
    from ..projector import read as read_projector

    spec = inspect(model.path)
    try:
        meta = scan_file(model.path)
    except (HeaderError, OSError):
        meta = {}
    template = meta.get("tokenizer.chat_template")
    template = template if isinstance(template, str) else ""
    arch = spec.architecture
    embedding = arch in ENCODER_ARCHITECTURES or f"{arch}.pooling_type" in meta
    # As Ollama derives them: from what the template renders and the metadata declares.
    capabilities = (["embedding"] if embedding else ["completion"]) + (["vision"] if model.projector else []) + (
        ["tools"] if family(template) else []) + (["thinking"] if thinks(template) else [])
    details = _details(model)
    size_label = meta.get("general.size_label")
    details["parameter_size"] = size_label if isinstance(size_label, str) else ""
    info = {"general.architecture": arch, f"{arch}.context_length": spec.n_ctx_train,
            f"{arch}.block_count": spec.n_layer, f"{arch}.embedding_length": spec.n_embd}
    shown = {"modelfile": "", "parameters": "", "template": template, "details": details, "model_info": info,
             "capabilities": capabilities, "modified_at": _modified(model.path).isoformat()}
    if model.projector is not None:  # as Ollama shows a vision model's
        facts = read_projector(model.projector)
        shown["projector_info"] = {"general.architecture": "clip", "clip.projector_type": facts.kind,
                                   "clip.vision.image_size": facts.image_size, "clip.vision.patch_size": facts.patch_size}
    return shown


def listed(served: InstalledModel | None) -> list[InstalledModel]:
    """The installed models, and the one `serve -m` named under its served name if it is not one
    of them (a file given by path): a client picking from the list finds what is served."""
    found = installed_models()
    if served is not None and not any(m.path.absolute() == served.path.absolute() for m in found):
        found.insert(0, served)
    return found


def ollama_running(served: Served, keep_alive: float | None, name: str) -> dict:
    path = served.path
    left = served.last_used + keep_alive - time.monotonic() if keep_alive is not None else 10 * 365 * 86400
    expires = datetime.now(timezone.utc).timestamp() + max(0.0, left)
    model = InstalledModel(name, path, path.stat().st_size if path.exists() else 0, "path")
    return {"name": name, "model": name, "size": model.size, "digest": _digest(path),
            "details": _details(model), "expires_at": datetime.fromtimestamp(expires, timezone.utc).isoformat(),
            "size_vram": 0}


def delete(name: str) -> None:
    """Ollama's /api/delete: what `localllm rm` does (a pulled model's files deleted, an added one
    forgotten); installed models only, never a path, never the starter or another tool's files."""
    from ..registry import remove

    model = find(name, allow_paths=False)
    try:
        remove(model)
    except UsageError as exc:  # not localllm's to delete: the registry says whose it is
        raise ApiError(403, str(exc), "model") from None


def copy(source: str, destination: str) -> None:
    """Ollama's /api/copy: the source's file registered under another name (as `localllm add`)."""
    from ..transfer import add_file

    model = find(source, allow_paths=False)
    if model.format != "gguf":
        raise ApiError(400, f"{source} is not a GGUF file: only those can be added under another name", "source")
    add_file(model.path, destination)
