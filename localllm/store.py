"""Getting models onto this machine and off it: pull (choose, check, download, verify) and remove.

Everything here that needs the network says so; what is already installed is found offline by
the registry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from .backends.llamacpp.planner import LoadPlan, Overrides, plan_quants
from .catalog import CatalogEntry, QuantFiles, load_catalog
from .errors import ModelNotFoundError, UsageError
from .gguf_info import ModelSpec
from .gguf_names import QUANT_ORDER, files_for_quant, is_projector, split_parts
from .hub import (
    Progress,
    RemoteFile,
    cached_file,
    download,
    list_files,
    list_ggufs,
    partial_bytes,
    remote_file,
)
from .references import Reference, parse_reference

# What a safetensors checkpoint needs to load, at the top of its repo: the config, the tokenizer,
# the weights and their index. Other weight formats (.bin, .pth, consolidated copies) and
# subfolders (original/, onnx/) are left on the Hub.
CHECKPOINT_FILE = re.compile(
    r"(config|generation_config|tokenizer|tokenizer_config|special_tokens_map|added_tokens|vocab|preprocessor_config)\.json"
    r"|tokenizer\.model|merges\.txt|chat_template\.(jinja|json)"
    r"|model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json")


@dataclass(frozen=True)
class PullPlan:
    """What a pull will fetch, and why those files."""

    ref: Reference
    files: tuple[RemoteFile, ...]
    plan: LoadPlan | None  # how a GGUF would load here; None for a safetensors checkpoint
    reason: str
    format: str = "gguf"

    @property
    def quant(self) -> str | None:
        return self.plan.spec.file_type if self.plan else None

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def missing(self) -> tuple[RemoteFile, ...]:
        return tuple(f for f in self.files if cached_file(f.repo_id, f.filename, f.revision) is None)

    @property
    def to_download(self) -> int:
        return sum(f.size - partial_bytes(f) for f in self.missing)


def prepare_pull(text: str, hw=None, full: bool = False) -> PullPlan:
    """Resolve a reference to the files to download (network: HEAD requests, a repo listing).
    `full`: the safetensors checkpoint (a catalog entry's safetensors_repo) instead of a GGUF."""
    ref = parse_reference(text, load_catalog())
    if ref.kind == "path":
        raise UsageError(f"{text} is a local path; there is nothing to pull (run it with -m)")
    if ref.kind == "name":
        raise ModelNotFoundError(text, "not in the catalog and not a Hub reference (owner/repo[:QUANT] or owner/repo/file.gguf); `localllm catalog` lists the catalog")
    listing = None
    if full or (ref.entry is None and not ref.filename and not ref.quant):
        repo = ref.entry.safetensors_repo if ref.entry is not None else ref.repo_id
        listing = list_files(repo, ref.revision)
        if full or not any(name.endswith(".gguf") for name in listing):
            return _checkpoint_pull(text, replace(ref, repo_id=repo), listing)
    hw = hw or _hardware()
    if ref.filename:
        names, chosen, reason = [ref.filename], None, "the file named"
    elif ref.entry is not None:
        chosen, reason = _choose_catalog_quant(ref.entry, ref.quant, hw)
        listing = list_ggufs(ref.repo_id, ref.revision)
        names = _catalog_files(ref, ref.entry.quant(chosen.spec.file_type), listing)
    else:
        available = {n: size for n, size in listing.items() if n.endswith(".gguf")} if listing is not None else list_ggufs(ref.repo_id, ref.revision)
        listing = available
        available = {n: size for n, size in available.items() if not is_projector(PurePosixPath(n))}
        if not available:
            raise ModelNotFoundError(text, "the repository holds no .gguf file")
        names, chosen, reason = _choose_hub_quant(ref, available, hw)
    if ref.filename and ref.entry is None:
        listing = list_ggufs(ref.repo_id, ref.revision)
    # A vision model's projector: fetched with it, kept beside it (a catalog entry says whether it sees).
    projector = _projector(listing or {}, names[0]) if ref.entry is None or ref.entry.vision else None
    files = tuple(remote_file(ref.repo_id, name, ref.revision) for name in _with_split_parts(names) + [projector]
                  if name is not None)
    if chosen is None:  # one file, no plan yet: its header (a few MB) tells how it would fit
        from .backends.llamacpp.planner import plan
        from .gguf_info import inspect_remote

        chosen = plan(hw, inspect_remote(ref.repo_id, names[0], ref.revision))
    return PullPlan(ref, files, chosen, reason)


def _checkpoint_pull(text: str, ref: Reference, available: dict[str, int]) -> PullPlan:
    names = sorted(name for name in available if CHECKPOINT_FILE.fullmatch(name))
    if "config.json" not in names or not any(name.endswith(".safetensors") for name in names):
        raise ModelNotFoundError(text, f"{ref.repo_id} holds no safetensors checkpoint (config.json and model*.safetensors)")
    files = tuple(remote_file(ref.repo_id, name, ref.revision) for name in names)
    return PullPlan(ref, files, None, "the full-precision checkpoint (config, tokenizer, every shard)", "safetensors")


def pull(prepared: PullPlan, progress: Progress | None = None) -> Path:
    """Download what is missing; return the (first) file's path in the cache, or a checkpoint's folder.

    ``progress(done, total)`` counts all the files together, bytes already on disk included.
    """
    paths, finished = [], 0
    for remote in prepared.files:
        def report(done: int, _total: int, before: int = finished) -> None:
            if progress:
                progress(before + done, prepared.size)

        paths.append(download(remote, report))
        finished += remote.size
    return paths[0].parent if prepared.format == "safetensors" else paths[0]


def _catalog_files(ref: Reference, quant: QuantFiles, listing: dict[str, int]) -> list[str]:
    """The catalog's files for a quantization, checked against the repository's listing. A name
    the repository spells otherwise (catalog names written from a model card: its `unverified`
    fields) is found by its quantization, as for any Hub repository, rather than failing the pull."""
    if all(name in listing for name in quant.files):
        return list(quant.files)
    found = files_for_quant(listing, quant.quant)
    if not found:
        names = sorted(PurePosixPath(n).name for n in listing if not is_projector(PurePosixPath(n)))
        has = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "") if names else "no GGUF"
        raise ModelNotFoundError(ref.text, f"{ref.repo_id} has no {quant.quant} file (the catalog names "
                                           f"{quant.files[0]}); it has {has}")
    return found


def _projector(listing: dict[str, int], model: str) -> str | None:
    """The mmproj GGUF in the model's folder of the repository (f16 first where there are several)."""
    folder = PurePosixPath(model).parent
    found = sorted((n for n in listing if n.endswith(".gguf") and is_projector(PurePosixPath(n))
                    and PurePosixPath(n).parent == folder), key=lambda n: ("f16" not in n.lower(), n))
    return found[0] if found else None


def _with_split_parts(names: list[str]) -> list[str]:
    return list(dict.fromkeys(part for name in names for part in split_parts(name)))


def _choose_catalog_quant(entry: CatalogEntry, quant: str | None, hw) -> tuple[LoadPlan, str]:
    best, _ = entry_plans(entry, hw, quant)
    if quant:
        return best, "the quantization asked for"
    return best, f"the best quantization for this machine ({best.label}) of {', '.join(q.quant for q in entry.quants)}"


def entry_plans(entry: CatalogEntry, hw, quant: str | None = None) -> tuple[LoadPlan, list[LoadPlan]]:
    """How each quantization of a catalog entry (or the one named) would load here, the best first;
    a vision model's projector is planned beside it, in RAM, as a load of the installed model does."""
    specs = [entry.spec(q) for q in entry.quants if not quant or q.quant == quant]
    return plan_quants(hw, specs, Overrides(reserved=(entry.projector_bytes,)))


def _choose_hub_quant(ref: Reference, available: dict[str, int], hw) -> tuple[list[str], LoadPlan | None, str]:
    """The files of the quantization asked for, or of the one the planner picks; a plan when it was made."""

    if ref.quant:
        names = files_for_quant(available, ref.quant)
        if not names:
            raise ModelNotFoundError(ref.text, f"no {ref.quant} file in {ref.repo_id}; it has {', '.join(sorted(available))}")
        return names, None, "the quantization asked for"
    groups = {q: files_for_quant(available, q) for q in QUANT_ORDER}
    groups = {q: names for q, names in groups.items() if names}
    if not groups:
        if len(available) == 1:
            return list(available), None, "the only GGUF in the repository"
        raise UsageError(f"{ref.repo_id} has several GGUF files and none with a known quantization in its name; name one: owner/repo/file.gguf")
    from .gguf_info import inspect_remote

    first = next(iter(groups.values()))[0]
    shape = inspect_remote(ref.repo_id, first, ref.revision)
    specs = [_resized(shape, q, sum(available[n] for n in names)) for q, names in groups.items()]
    best, _ = plan_quants(hw, specs)
    return groups[best.spec.file_type], best, f"the best quantization for this machine ({best.label}) of {', '.join(groups)}"


def _resized(spec: ModelSpec, quant: str, size: int) -> ModelSpec:
    """Another quantization of the same model: same shapes, bytes scaled to its file size."""
    from dataclasses import replace

    scale = size / max(spec.total_bytes, 1)
    return replace(spec, name=f"{spec.name} as {quant}", file_type=quant,
                   layer_bytes=tuple(int(b * scale) for b in spec.layer_bytes), other_bytes=int(spec.other_bytes * scale),
                   output_bytes=int(spec.output_bytes * scale), total_bytes=size)


def _hardware():
    from .backends import this_machine

    return this_machine()


# A file this size answers at about reading speed on a laptop CPU; bigger ones are offered, not recommended.
CPU_RECOMMEND_BYTES = 3_000_000_000


@dataclass(frozen=True)
class CatalogChoice:
    """A catalog entry with the quantization the planner picks for this machine."""

    entry: CatalogEntry
    quant: str
    size: int
    plan: LoadPlan


def catalog_choices(hw) -> list[CatalogChoice]:
    choices = []
    for entry in load_catalog().entries:
        best, _ = entry_plans(entry, hw)
        quant = entry.quant(best.spec.file_type)
        choices.append(CatalogChoice(entry, quant.quant, quant.size, best))
    return choices


def recommend(choices: list[CatalogChoice]) -> CatalogChoice | None:
    """The largest model that fits on the GPU; without one, the largest that a CPU runs at reading speed."""
    on_gpu = [c for c in choices if c.plan.fit == "gpu"]
    on_cpu = [c for c in choices if c.plan.fit in ("partial", "cpu") and c.size <= CPU_RECOMMEND_BYTES]
    pool = on_gpu or on_cpu or [c for c in choices if c.plan.fit != "none"]
    return max(pool, key=lambda c: (c.entry.params_b, -c.size)) if pool else None
