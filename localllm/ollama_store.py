"""Models Ollama downloaded, read in place from its store: ``$OLLAMA_MODELS``, ``~/.ollama/models``,
or the Linux service's ``/usr/share/ollama/.ollama/models``.

The store is content-addressed: ``manifests/HOST/NAMESPACE/MODEL/TAG`` is a JSON manifest whose
``application/vnd.ollama.image.model`` layer names the GGUF by digest, kept as
``blobs/sha256-HEX``. Models are named as Ollama names them, with ``ollama:`` in front:
``ollama:llama3.2:3b`` (the default registry and ``library`` namespace left out),
``ollama:user/model:tag``, ``ollama:hf.co/owner/repo:Q4_K_M``.

A manifest is another program's file: it is size-bounded, its digest must be a sha256 and its
blob path is built from that digest (so it cannot point outside the store), and a blob whose
size disagrees with the manifest is reported, not loaded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from . import safejson
from .hub import inside  # a link in the store may point anywhere

PREFIX = "ollama:"
MODEL_LAYER = "application/vnd.ollama.image.model"
DEFAULT_REGISTRY, DEFAULT_NAMESPACE = "registry.ollama.ai", "library"
MAX_MANIFEST_BYTES = 1 << 20  # real ones are under 2 KiB
MAX_MANIFESTS = 10_000
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class OllamaModel:
    name: str  # with the ollama: prefix
    path: Path | None  # the GGUF blob; None when the manifest is broken
    size: int
    sha256: str = ""
    problem: str = ""  # why it cannot be used, when path is None


def store_roots() -> list[Path]:
    if env := os.environ.get("OLLAMA_MODELS"):
        return [Path(env).expanduser()]
    return [Path.home() / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]


def display_name(parts: tuple[str, ...]) -> str:
    """Ollama's short name for manifests/HOST/NAMESPACE/MODEL/TAG."""
    host, namespace, model, tag = parts
    if host == DEFAULT_REGISTRY:
        stem = model if namespace == DEFAULT_NAMESPACE else f"{namespace}/{model}"
    else:
        stem = f"{host}/{namespace}/{model}"
    return f"{PREFIX}{stem}:{tag}"


def scan() -> list[OllamaModel]:
    found: dict[str, OllamaModel] = {}
    for root in store_roots():
        manifests = root / "manifests"
        try:
            if not manifests.is_dir():
                continue
        except OSError:  # e.g. the service's folder, unreadable to this user
            continue
        for count, path in enumerate(sorted(manifests.glob("*/*/*/*"))):
            if count >= MAX_MANIFESTS:
                break
            parts = path.relative_to(manifests).parts
            if not all(_PART.match(p) for p in parts) or not path.is_file() or not inside(path, manifests):
                continue
            name = display_name(parts)
            found.setdefault(name, read_manifest(name, path, root / "blobs"))
    return sorted(found.values(), key=lambda m: m.name)


def read_manifest(name: str, path: Path, blobs: Path) -> OllamaModel:
    def broken(problem: str) -> OllamaModel:
        return OllamaModel(name, None, 0, problem=f"Ollama's manifest {path} {problem}")

    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            return broken(f"is over {MAX_MANIFEST_BYTES} bytes, not a manifest")
        data = safejson.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        return broken(f"cannot be read as JSON ({type(exc).__name__})")
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, list):
        return broken("has no list of layers")
    models = [layer for layer in layers if isinstance(layer, dict) and layer.get("mediaType") == MODEL_LAYER]
    if len(models) != 1:
        return broken(f"has {len(models)} model layers, not one (a safetensors import, which localllm cannot run?)")
    digest, size = models[0].get("digest"), models[0].get("size")
    found = _DIGEST.match(digest) if isinstance(digest, str) else None
    if found is None or not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        return broken("has a model layer without a sha256 digest and a size")
    blob = blobs / f"sha256-{found.group(1)}"
    if not inside(blob, blobs):
        return broken(f"names blob sha256-{found.group(1)[:12]}..., a link that leaves {blobs}")
    try:
        actual = blob.stat().st_size
    except OSError:
        return broken(f"names blob sha256-{found.group(1)[:12]}..., which is not in {blobs}")
    if actual != size:
        return broken(f"says the model is {size} bytes but its blob is {actual} (an unfinished pull?)")
    return OllamaModel(name, blob, size, found.group(1))
