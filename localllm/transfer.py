"""Models brought by hand, and carried to machines without a network; checking installed files.

- ``add_file``: register a GGUF where it lies, with its SHA-256 taken now.
- ``export``: an installed Hub model's files, re-hashed while copied, plus ``localllm-manifest.json``
  (repo, commit, and each file's size, SHA-256 and Hub ETag) in a folder (``pull --to``).
- ``import_folder``: such a folder into this machine's Hugging Face cache, every file checked
  against the manifest first, so the model has the same name and files as if pulled here.
- ``verify``: re-hash installed files against what was recorded when they arrived: the Hub's
  checksum (the cache names each blob by it), Ollama's digest, pip's RECORD for the starter, the
  hash taken by ``add``.

A manifest is hostile input: size-bounded, names checked to stay inside their folder, hashes
checked for form, and nothing is written to the cache before every file has verified.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import safejson
from .errors import LocalLLMError, UsageError
from .hub import (
    GIT_SHA1,
    SHA256,
    check_disk,
    check_repo_path,
    inside,
    link_snapshot,
    storage_folder,
)
from .printable import printable

MANIFEST = "localllm-manifest.json"
MANIFEST_VERSION = 1
MAX_MANIFEST_BYTES = 1 << 20
MAX_FILES = 10_000
CHUNK = 4 << 20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
Progress = Callable[[int, int], None]


class IntegrityError(LocalLLMError):
    """A file's bytes are not the ones recorded for it."""

    exit_code = 10


@dataclass(frozen=True)
class Check:
    model: str
    path: Path
    status: str  # "ok", "changed", "missing", "unrecorded"
    detail: str = ""


def hash_file(path: Path, algorithm: str = "sha256", progress: Progress | None = None, done: int = 0,
              total: int = 0, copy_to=None) -> str:
    """The file's hex digest ("sha256", or "git" for a git blob id), optionally writing a copy."""
    size = path.stat().st_size
    digest = hashlib.sha1(f"blob {size}\0".encode()) if algorithm == "git" else hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            if copy_to is not None:
                copy_to.write(chunk)
            done += len(chunk)
            if progress:
                progress(done, total or size)
    return digest.hexdigest()


def _etag_algorithm(etag: str) -> str:
    return "sha256" if SHA256.fullmatch(etag) else "git"


# --- add FILE --------------------------------------------------------------------------------


def add_file(path: Path, name: str | None, progress: Progress | None = None, projector: Path | None = None) -> dict:
    """Register a GGUF in place under a name; its SHA-256 is kept for `verify`. `projector`: a
    vision model's mmproj GGUF, registered with it (checked to be a projector)."""
    from .backends.llamacpp.load import check_gguf
    from .config import cache_dir, load_config, save_config
    from .gguf_info import inspect_file
    from .registry import installed_models

    path = path.expanduser().absolute()
    check_gguf(path)  # a GGUF whose header llama.cpp would choke on is refused now, with the reason
    name = name or path.stem
    if not _NAME.match(name) or name.startswith("ollama:"):
        raise UsageError(f"not a usable model name: {printable(name[:100])!r} (letters, digits and ._:/- ; "
                         "at most 128; not starting with ollama:)")
    if any(m.name.lower() == name.lower() for m in installed_models()):
        raise UsageError(f"a model named {name} is already installed: choose another with --name")
    entry = {"name": name, "path": str(path), "size": path.stat().st_size, "sha256": hash_file(path, progress=progress)}
    if projector is not None:
        entry["projector"] = str(check_projector(projector.expanduser().absolute()))
    inspect_file(path, cache_dir())  # the shapes `list` and `plan` read, cached now: a 1 GB file's cost 13 s on the first list
    config = load_config()
    config["added_models"] = [*config.get("added_models", []), entry]
    save_config(config)
    return entry


def check_projector(path: Path) -> Path:
    """A vision projector GGUF (general.architecture "clip"), or a clear refusal."""
    import gguf

    try:
        field = gguf.GGUFReader(path, "r").fields.get("general.architecture")
        arch = field.contents() if field is not None else None
    except (OSError, ValueError, IndexError) as exc:
        raise UsageError(f"{printable(path.name)} is not a GGUF file ({exc})") from None
    if arch != "clip":
        raise UsageError(f"{printable(path.name)} is not a vision projector (its architecture is "
                         f"{printable(str(arch))[:40]}, a projector's is clip)")
    return path


# --- pull --to DIR ----------------------------------------------------------------------------


def export(model, folder: Path, progress: Progress | None = None) -> Path:
    """Copy an installed Hub model and its manifest into folder; every byte re-hashed on the way."""
    if model.source != "hf-cache":
        raise UsageError(f"{model.name} did not come from the Hub; copy {model.path} itself")
    snapshot, names = _snapshot_files(model)
    files, total = [], sum((snapshot / n).stat().st_size for n in names)
    folder = folder.expanduser().absolute()
    check_disk(total, folder)
    done = 0
    for rel in names:
        source = snapshot / rel
        etag = source.resolve().name  # the cache names a blob by the Hub's checksum of it
        if not (SHA256.fullmatch(etag) or GIT_SHA1.fullmatch(etag)):
            raise IntegrityError(f"{source} is not a Hugging Face cache blob; cannot vouch for it")
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        sha256, etag_seen = _copy_hashed(source, target, etag, progress, done, total)
        if etag_seen != etag:
            raise IntegrityError(f"{rel} in the cache no longer matches its checksum (run localllm verify)")
        size = target.stat().st_size
        done += size
        files.append({"path": rel, "size": size, "sha256": sha256, "etag": etag})
    manifest = {"localllm_manifest": MANIFEST_VERSION, "name": model.name, "repo_id": model.repo_id,
                "revision": snapshot.name, "format": model.format, "entry": model.filename, "files": files}
    _write_atomically(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return folder


def _snapshot_files(model) -> tuple[Path, list[str]]:
    from .gguf_names import split_parts

    if model.format == "safetensors":
        snapshot = model.path
        return snapshot, sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
    snapshot = model.path.parents[len(Path(model.filename).parts) - 1]
    return snapshot, [rel for rel in split_parts(model.filename) if (snapshot / rel).exists()]


def _copy_hashed(source: Path, target: Path, etag: str, progress, done: int, total: int) -> tuple[str, str]:
    """Copy through a temporary file; return (SHA-256, the digest of the ETag's kind)."""
    fd, tmp = tempfile.mkstemp(prefix=".part-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            sha256 = hash_file(source, "sha256", progress, done, total, copy_to=out)
            out.flush()
            os.fsync(out.fileno())
        seen = sha256 if _etag_algorithm(etag) == "sha256" else hash_file(Path(tmp), "git")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha256, seen


# --- add DIR ----------------------------------------------------------------------------------


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise UsageError(f"{folder} has no {MANIFEST} (made by `localllm pull MODEL --to DIR`); "
                         "for a folder of GGUF files use: localllm list --add-dir DIR")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise UsageError(f"{path} is over {MAX_MANIFEST_BYTES} bytes: not a localllm manifest")
    try:
        data = safejson.loads(path.read_bytes())
    except ValueError:
        raise UsageError(f"{path} is not valid JSON") from None
    bad = _manifest_problem(data)
    if bad:
        raise UsageError(f"{path}: {bad}")
    for entry in data["files"]:
        try:
            check_repo_path(entry["path"], str(path))
        except LocalLLMError as exc:
            raise UsageError(str(exc)) from None
        if not inside(folder / entry["path"], folder):
            raise UsageError(f"{path}: {printable(entry['path'][:200])} leaves {folder}")
    named = data.get("entry")  # the file `add` reports as the model: one of the checked ones, never any path
    if named is not None and (not isinstance(named, str) or named not in {f["path"] for f in data["files"]}):
        raise UsageError(f"{path}: entry must be one of the files it lists")
    return data


def _manifest_problem(data) -> str:
    if not isinstance(data, dict) or data.get("localllm_manifest") != MANIFEST_VERSION:
        return f"not a version-{MANIFEST_VERSION} localllm manifest"
    if not isinstance(data.get("repo_id"), str) or not _REPO.match(data["repo_id"]):
        return "repo_id is not owner/name"
    if not isinstance(data.get("revision"), str) or not GIT_SHA1.fullmatch(data["revision"]):
        return "revision is not a commit hash"
    files = data.get("files")
    if not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
        return f"files must be a list of 1 to {MAX_FILES} entries"
    for f in files:
        if not (isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("size"), int)
                and not isinstance(f.get("size"), bool) and f["size"] >= 0
                and isinstance(f.get("sha256"), str) and SHA256.fullmatch(f["sha256"])
                and isinstance(f.get("etag"), str) and (SHA256.fullmatch(f["etag"]) or GIT_SHA1.fullmatch(f["etag"]))):
            return "each file needs path, size, sha256 and etag"
    if len({f["path"] for f in files}) != len(files):
        return "a file is listed twice"
    if data.get("format", "gguf") not in ("gguf", "safetensors"):
        return "format must be gguf or safetensors"
    return ""


def import_folder(folder: Path, progress: Progress | None = None) -> Path:
    """Check every file of an exported folder, then place them in the Hugging Face cache."""
    from huggingface_hub import constants

    folder = folder.expanduser().absolute()
    manifest = read_manifest(folder)
    total, done = sum(f["size"] for f in manifest["files"]), 0
    for f in manifest["files"]:
        path = folder / f["path"]
        if not path.is_file():
            raise IntegrityError(f"{f['path']} is listed in {MANIFEST} but missing from {folder}")
        if path.stat().st_size != f["size"]:
            raise IntegrityError(f"{f['path']} is {path.stat().st_size} bytes, the manifest says {f['size']}: "
                                 "copied incompletely? nothing was installed")
        if hash_file(path, progress=progress, done=done, total=total) != f["sha256"]:
            raise IntegrityError(f"{f['path']} does not match its SHA-256 in {MANIFEST}: the copy is damaged; "
                                 "nothing was installed")
        done += f["size"]
    check_disk(total)
    storage = storage_folder(manifest["repo_id"])
    snapshot = storage / "snapshots" / manifest["revision"]
    if not inside(storage, constants.HF_HUB_CACHE):
        raise UsageError(f"{manifest['repo_id']}: its cache folder would leave {constants.HF_HUB_CACHE}")
    for f in manifest["files"]:
        blob = storage / "blobs" / f["etag"]
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            sha256, seen = _copy_hashed(folder / f["path"], blob, f["etag"], None, 0, 0)
            if sha256 != f["sha256"] or seen != f["etag"]:
                blob.unlink()
                raise IntegrityError(f"{f['path']} changed while it was installed, or its ETag is not its checksum")
        link_snapshot(blob, snapshot / f["path"])
    ref = storage / "refs" / "main"
    if not ref.exists():
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(manifest["revision"])
    entry = manifest.get("entry")
    return snapshot / entry if isinstance(entry, str) and manifest.get("format") == "gguf" else snapshot


# --- verify -----------------------------------------------------------------------------------


def recorded_files(model) -> list[tuple[Path, str, str]]:
    """(file, algorithm, digest) as recorded when the model arrived; empty when nothing was."""
    if model.source == "hf-cache":
        snapshot, names = _snapshot_files(model)
        found = []
        for rel in names:
            etag = (snapshot / rel).resolve().name
            if SHA256.fullmatch(etag) or GIT_SHA1.fullmatch(etag):
                found.append((snapshot / rel, _etag_algorithm(etag), etag))
        return found
    if model.source == "ollama":
        return [(model.path, "sha256", model.path.name.removeprefix("sha256-"))]
    if model.source == "added":
        return [(model.path, "sha256", model.sha256)]
    if model.source == "starter":
        return _pip_record(model.path)
    return []


def _pip_record(path: Path) -> list[tuple[Path, str, str]]:
    from importlib.metadata import PackageNotFoundError, distribution

    from .registry import STARTER_PACKAGE

    try:
        dist = distribution(STARTER_PACKAGE)
    except PackageNotFoundError:
        return []
    for file in dist.files or ():
        if file.hash is not None and file.hash.mode == "sha256" and Path(dist.locate_file(file)).resolve() == path.resolve():
            digest = base64.urlsafe_b64decode(file.hash.value + "=" * (-len(file.hash.value) % 4)).hex()
            return [(path, "sha256", digest)]
    return []


def verify(models) -> list[Check]:
    checks = []
    for model in models:
        recorded = recorded_files(model)
        if not recorded:
            checks.append(Check(model.name, model.path, "unrecorded", f"no checksum was recorded ({model.source})"))
        for path, algorithm, digest in recorded:
            if not path.exists():
                checks.append(Check(model.name, path, "missing"))
                continue
            actual = hash_file(path, algorithm)
            checks.append(Check(model.name, path, "ok" if actual == digest else "changed",
                                "" if actual == digest else f"expected {digest[:16]}..., found {actual[:16]}..."))
    return checks


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
