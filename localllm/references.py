"""What a model reference typed by a user means, before anything is looked up on disk or the Hub.

    ./model.gguf, /abs/path.gguf, ~/m.gguf     a local file
    qwen3, qwen3:8b, qwen3:8b-q4_k_m, qwen3:q8_0  a catalog model (size and quant optional)
    hf.co/owner/repo, hf.co/owner/repo:Q4_K_M   a Hub repo (quant optional), as Ollama writes it
    owner/repo/file.gguf                        one file in a Hub repo (owner/repo/dir/file.gguf too)
    anything else                               the name of an installed model (see registry)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .catalog import Catalog, CatalogEntry
from .errors import ModelNotFoundError

HUB_PREFIXES = ("https://huggingface.co/", "http://huggingface.co/", "huggingface.co/", "hf.co/")


@dataclass(frozen=True)
class Reference:
    text: str
    kind: str  # "path", "catalog", "hub" or "name"
    path: Path | None = None
    entry: CatalogEntry | None = None
    repo_id: str | None = None
    filename: str | None = None
    quant: str | None = None
    revision: str = "main"


def path_exists(path: Path) -> bool:
    """exists(), with a name the filesystem cannot hold (too long, a loop of links) as absent."""
    try:
        return path.exists()
    except OSError:
        return False


def parse_reference(text: str, catalog: Catalog) -> Reference:
    ref = text.strip()
    path = Path(ref).expanduser()
    if path_exists(path) or ref.startswith(("./", "../", "/", "~")) or (ref.endswith(".gguf") and "/" not in ref):
        return Reference(text, "path", path=path.absolute())
    lowered = ref.lower()
    for prefix in HUB_PREFIXES:
        if lowered.startswith(prefix):
            return _hub(text, ref[len(prefix):])
    if "/" in ref:
        return _hub(text, ref)
    name, _, tag = lowered.partition(":")
    if name in catalog.defaults:
        return _catalog(text, name, tag, catalog)
    return Reference(text, "name")


def _hub(text: str, rest: str) -> Reference:
    rest = rest.strip("/")
    body, _, quant = rest.partition(":")
    parts = body.split("/")
    if len(parts) == 2 and all(parts):
        return Reference(text, "hub", repo_id=body, quant=quant or None)
    if len(parts) > 2 and all(parts) and body.endswith(".gguf") and not quant:
        return Reference(text, "hub", repo_id="/".join(parts[:2]), filename="/".join(parts[2:]))
    raise ModelNotFoundError(text, "a Hub reference is owner/repo, owner/repo:QUANT or owner/repo/file.gguf")


def _catalog(text: str, name: str, tag: str, catalog: Catalog) -> Reference:
    sizes = catalog.sizes(name)
    size, quant = (tag, "") if tag in sizes else tag.partition("-")[::2] if "-" in tag else ("", tag)
    if size and size not in sizes or (quant and quant[0].isdigit() and not size):
        raise ModelNotFoundError(text, f"{name} comes in {', '.join(sizes)}")
    entry = catalog.find(name, size or None)
    if quant and entry.quant(quant) is None:
        raise ModelNotFoundError(text, f"{entry.ref} comes in {', '.join(q.quant for q in entry.quants)}")
    return Reference(text, "catalog", entry=entry, repo_id=entry.gguf_repo,
                     quant=entry.quant(quant).quant if quant else None)
