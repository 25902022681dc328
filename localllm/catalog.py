"""The model catalog: curated chat models, where their GGUF files are, and their shapes.

The shipped catalog is ``models/catalog.json`` (installed as ``localllm.models``); a user adds or
replaces families in ``$LOCALLLM_HOME/catalog.json`` with the same schema. Both are validated
here, at the edge: a mistake names the file and the field, and never reaches the planner.

The shapes let the planner label every entry (fits on GPU / partial / CPU / too big) before
anything is downloaded. Catalog sizes are the quantizer's published sizes; a pull reads the
exact ones from the Hub.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from . import safejson
from .config import home
from .errors import CatalogError
from .gguf_info import SWA_PATTERN_BY_ARCH, ModelSpec

SCHEMA_VERSION = 1
USER_CATALOG = "catalog.json"
# Bits per weight of each quantization, as llama.cpp's quantize tool reports them; used only to
# split a catalog size between the embeddings and the repeating blocks.
BITS_PER_WEIGHT = {"F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_K_M": 5.67, "Q5_K_S": 5.52,
                   "Q4_K_M": 4.89, "Q4_K_S": 4.58, "Q4_0": 4.5, "Q4_1": 5.0, "Q3_K_M": 3.91, "Q2_K": 3.35, "MXFP4": 4.25}


@dataclass(frozen=True)
class Arch:
    architecture: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    sliding_window: int | None = None
    swa_pattern: int | None = None  # every Nth layer attends globally
    n_expert: int = 0
    n_expert_used: int = 0


@dataclass(frozen=True)
class QuantFiles:
    quant: str
    files: tuple[str, ...]  # paths inside the repo; several for a split GGUF
    size: int  # bytes, from the catalog (decimal GB)


@dataclass(frozen=True)
class CatalogEntry:
    """One size of one model family, e.g. qwen3:8b."""

    name: str
    size: str
    family: str
    license: str
    description: str
    params_b: float
    context_length: int
    arch: Arch
    safetensors_repo: str
    gguf_repo: str
    quants: tuple[QuantFiles, ...]
    unverified: tuple[str, ...]
    origin: str  # the file the entry came from
    vision: bool = False  # its repository holds its projector (mmproj): it sees images
    projector_bytes: int = 0  # what its projector takes loaded (weights and encoder buffer), planned beside it

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.size}"

    def quant(self, name: str) -> QuantFiles | None:
        return next((q for q in self.quants if q.quant.upper() == name.upper()), None)

    def spec(self, quant: QuantFiles) -> ModelSpec:
        """The shapes the planner needs, before download: exact attention shapes, approximate byte split."""
        a = self.arch
        bits = BITS_PER_WEIGHT.get(quant.quant.upper(), 16.0 * quant.size / max(self.params_b * 1e9 * 2, 1))
        embeddings = int(a.n_vocab * a.n_embd * bits / 8)
        other = min(2 * embeddings, quant.size // 3)  # input embeddings and output head, when untied
        per_layer = (quant.size - other) // a.n_layer
        swa: tuple[bool, ...] = ()
        if a.sliding_window:
            every = a.swa_pattern or SWA_PATTERN_BY_ARCH.get(a.architecture, 0)
            swa = tuple(not every or (i % every) < every - 1 for i in range(a.n_layer))
        return ModelSpec(
            name=f"{self.ref}-{quant.quant.lower()}", architecture=a.architecture, n_layer=a.n_layer, n_embd=a.n_embd,
            n_head=a.n_head, n_head_kv=(a.n_head_kv,) * a.n_layer, head_dim_k=a.head_dim, head_dim_v=a.head_dim,
            n_ff=0, n_vocab=a.n_vocab, n_ctx_train=self.context_length, sliding_window=a.sliding_window,
            swa_layers=swa, n_expert=a.n_expert, n_expert_used=a.n_expert_used, file_type=quant.quant.upper(),
            layer_bytes=(per_layer,) * a.n_layer, other_bytes=other, output_bytes=other // 2,
            total_bytes=quant.size, files=quant.files,
        )


@dataclass(frozen=True)
class Catalog:
    entries: tuple[CatalogEntry, ...]
    defaults: dict[str, str]  # family name -> default size

    def find(self, name: str, size: str | None = None) -> CatalogEntry | None:
        name = name.lower()
        size = (size or self.defaults.get(name, "")).lower()
        return next((e for e in self.entries if e.name == name and e.size == size), None)

    def sizes(self, name: str) -> list[str]:
        return [e.size for e in self.entries if e.name == name.lower()]


def load_catalog() -> Catalog:
    """The shipped catalog, with the user's families added (a family of the same name replaces it)."""
    shipped = files("localllm.models").joinpath("catalog.json")
    families = parse_catalog(json.loads(shipped.read_text(encoding="utf-8")), "the built-in catalog")
    user = user_catalog_path()
    if user.is_file():
        try:
            data = safejson.loads(user.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise CatalogError(str(user), f"not valid JSON ({exc})") from exc
        replaced = parse_catalog(data, str(user))
        families = {**families, **replaced}
    entries = tuple(e for name in families for e in families[name][1])
    return Catalog(entries, {name: default for name, (default, _) in families.items()})


def parse_catalog(data: Any, origin: str) -> dict[str, tuple[str, list[CatalogEntry]]]:
    """Validate a catalog document; return {family name: (default size, entries)}."""
    doc = _Fields(data, origin, "")
    if doc.take("schema", int) != SCHEMA_VERSION:
        raise CatalogError(origin, f"schema must be {SCHEMA_VERSION}")
    doc.take("about", str, required=False)
    families: dict[str, tuple[str, list[CatalogEntry]]] = {}
    for i, raw in enumerate(doc.take("models", list)):
        fam = _Fields(raw, origin, f"models[{i}]")
        name = fam.take("name", str).lower()
        if not name or ":" in name or "/" in name or name in families:
            raise CatalogError(origin, f"models[{i}].name {name!r} must be unique, without ':' or '/'")
        common = {k: fam.take(k, str) for k in ("family", "license", "description")}
        default = fam.take("default", str).lower()
        sizes = fam.take("sizes", dict)
        entries = [_entry(name, size.lower(), raw_size, common, origin, f"{fam.where}.sizes.{size}")
                   for size, raw_size in sizes.items()]
        fam.done()
        if default not in {e.size for e in entries}:
            raise CatalogError(origin, f"models[{i}].default {default!r} is not one of its sizes")
        families[name] = (default, entries)
    doc.done()
    return families


def _entry(name: str, size: str, raw: Any, common: dict, origin: str, where: str) -> CatalogEntry:
    f = _Fields(raw, origin, where)
    params = f.take("params_b", (int, float))
    context = f.take("context_length", int)
    a = _Fields(f.take("arch", dict), origin, f"{where}.arch")
    arch = Arch(
        architecture=a.take("architecture", str),
        **{k: a.take(k, int, positive=True) for k in ("n_layer", "n_embd", "n_head", "n_head_kv", "head_dim", "n_vocab")},
        sliding_window=a.take("sliding_window", int, required=False, positive=True),
        swa_pattern=a.take("swa_pattern", int, required=False, positive=True),
        n_expert=a.take("n_expert", int, required=False) or 0,
        n_expert_used=a.take("n_expert_used", int, required=False) or 0,
    )
    a.done()
    safetensors_repo = f.take("safetensors_repo", str)
    gguf_repo = f.take("gguf_repo", str)
    for key, repo in (("safetensors_repo", safetensors_repo), ("gguf_repo", gguf_repo)):
        if repo.count("/") != 1:
            raise CatalogError(origin, f"{where}.{key} must be owner/name, not {repo!r}")
    pattern = f.take("pattern", str)
    if "{quant}" not in pattern:
        raise CatalogError(origin, f"{where}.pattern must contain {{quant}}")
    quants = []
    for quant, value in f.take("quants", dict).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            size_gb, names = value, (pattern.format(quant=quant),)
        else:
            q = _Fields(value, origin, f"{where}.quants.{quant}")
            size_gb = q.take("size_gb", (int, float))
            names = tuple(q.take("files", list))
            q.done()
            if not names or not all(isinstance(n, str) and n.endswith(".gguf") for n in names):
                raise CatalogError(origin, f"{where}.quants.{quant}.files must list .gguf paths")
        if size_gb <= 0:
            raise CatalogError(origin, f"{where}.quants.{quant} size must be positive")
        quants.append(QuantFiles(quant, names, int(size_gb * 1e9)))
    if not quants:
        raise CatalogError(origin, f"{where}.quants is empty")
    unverified = tuple(f.take("unverified", list, required=False) or ())
    vision = f.take("vision", bool, required=False) or False
    projector_gb = f.take("projector_gb", (int, float), required=False, positive=True)
    f.done()
    if projector_gb is not None and not vision:
        raise CatalogError(origin, f"{where}.projector_gb is for a model with \"vision\": true")
    if params <= 0 or context <= 0:
        raise CatalogError(origin, f"{where}: params_b and context_length must be positive")
    return CatalogEntry(name=name, size=size, params_b=float(params), context_length=context, arch=arch,
                        safetensors_repo=safetensors_repo, gguf_repo=gguf_repo, quants=tuple(quants),
                        unverified=unverified, origin=origin, vision=vision,
                        projector_bytes=int((projector_gb or 0) * 1e9), **common)


class _Fields:
    """Takes typed fields out of one JSON object and complains about anything left over (typos)."""

    def __init__(self, data: Any, origin: str, where: str):
        if not isinstance(data, dict):
            raise CatalogError(origin, f"{where or 'the document'} must be a JSON object")
        self.data, self.origin, self.where = dict(data), origin, where

    def take(self, key: str, kind, required: bool = True, positive: bool = False):
        path = f"{self.where}.{key}" if self.where else key
        if key not in self.data:
            if required:
                raise CatalogError(self.origin, f"{path} is missing")
            return None
        value = self.data.pop(key)
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            names = " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
            raise CatalogError(self.origin, f"{path} must be {names}, not {type(value).__name__}")
        if positive and value <= 0:
            raise CatalogError(self.origin, f"{path} must be positive")
        return value

    def done(self) -> None:
        if self.data:
            raise CatalogError(self.origin, f"{self.where or 'the document'} has unknown fields: {', '.join(sorted(self.data))}")


def user_catalog_path() -> Path:
    return home() / USER_CATALOG
