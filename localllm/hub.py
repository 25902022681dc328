"""Talking to the Hugging Face Hub (or any server that speaks its protocol, via HF_ENDPOINT).

huggingface_hub provides the URLs, the auth headers, the HTTP session, the typed errors and the
cache layout. The transfer itself is ours, because huggingface_hub (2.x) neither resumes a
download that another process started (its temporary file is unique to the process and deleted
on failure) nor checks the bytes against the Hub's SHA-256. Here:

- bytes go to ``blobs/<etag>.incomplete`` in the shared cache, so any later pull resumes it;
- a file lock (the one huggingface_hub itself takes) keeps two pulls of one file apart;
- a stalled or dropped transfer is retried with backoff from where it stopped;
- the file is hashed as it arrives and only a file matching the ETag (the SHA-256 of an LFS
  file, the git blob id of a small one) is moved into place and linked into the snapshot:
  nothing unverified is ever registered as installed.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from .errors import DiskSpaceError, DownloadError, LocalLLMError, ModelNotFoundError
from .printable import printable

CHUNK = 1 << 20
DISK_HEADROOM = 64 << 20  # keep this much free after a download
MAX_ATTEMPTS_WITHOUT_PROGRESS = 5
MAX_REDIRECTS = 10
SHA256 = re.compile(r"[0-9a-f]{64}")
GIT_SHA1 = re.compile(r"[0-9a-f]{40}")

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass(frozen=True)
class RemoteFile:
    repo_id: str
    filename: str
    revision: str
    commit: str
    etag: str
    size: int
    url: str

    @property
    def sha256(self) -> str | None:
        return self.etag if SHA256.fullmatch(self.etag) else None


def check_repo_path(name: str, what: str) -> str:
    """A file name from a server or a reference, proven to stay inside its repo: relative, no
    `..`, no backslash or NUL; paths in the cache are built from it."""
    parts = PurePosixPath(name).parts
    if (not name or len(name) > 1024 or name.startswith("/") or "\\" in name or "\0" in name
            or any(p in ("..", ".") for p in parts) or re.match(r"^[A-Za-z]:", name)):
        raise DownloadError(f"{what}: unsafe file name {printable(name[:200])!r} (it must stay inside the repo)")
    return name


def inside(path: Path, root: Path) -> bool:
    """Whether path, once links are resolved, lies inside root."""
    resolved, top = os.path.realpath(path), os.path.realpath(root)
    return resolved == top or resolved.startswith(top + os.sep)


def _checked(remote: RemoteFile) -> RemoteFile:
    """A RemoteFile whose network-given parts (ETag, commit, name, size) are what they claim to
    be: cache paths are built from them, so a `../` ETag would write or delete outside it."""
    name = f"{remote.repo_id}/{remote.filename}"
    etag, commit = remote.etag.strip('"').lower(), remote.commit.lower()
    if not (SHA256.fullmatch(etag) or GIT_SHA1.fullmatch(etag)):
        raise DownloadError(f"{name}: the server sent an invalid checksum (ETag {printable(etag[:80])!r}); nothing was written")
    if not GIT_SHA1.fullmatch(commit):
        raise DownloadError(f"{name}: the server sent an invalid commit ({printable(commit[:80])!r}); nothing was written")
    check_repo_path(remote.filename, name)
    if remote.size < 0:
        raise DownloadError(f"{name}: the server sent an invalid size ({remote.size})")
    return replace(remote, etag=etag, commit=commit)


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


@contextmanager
def hub_errors(what: str) -> Iterator[None]:
    """Turn huggingface_hub's and the HTTP client's errors into localllm's, each one line."""
    from huggingface_hub import errors

    try:
        yield
    except errors.GatedRepoError as exc:
        raise DownloadError(f"{what} is gated: accept its terms on the Hub, then set HF_TOKEN to a token of that account") from exc
    except errors.RepositoryNotFoundError as exc:
        raise ModelNotFoundError(what, "no such repository on the Hub; a private one needs HF_TOKEN") from exc
    except (errors.RevisionNotFoundError, errors.EntryNotFoundError) as exc:
        raise ModelNotFoundError(what, "no such file or revision on the Hub") from exc
    except errors.OfflineModeIsEnabled as exc:
        raise DownloadError(f"{what}: offline (HF_HUB_OFFLINE is set); installed models still run") from exc
    except errors.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        hint = "; set HF_TOKEN to a token that may read it" if status in (401, 403) else ""
        raise DownloadError(f"{what}: the Hub answered HTTP {status}{hint}") from exc
    except http_client().TooManyRedirects as exc:
        raise DownloadError(f"{what}: the server answers with redirect after redirect (a redirect loop)") from exc
    except http_client().TransportError as exc:
        raise DownloadError(f"{what}: cannot reach {endpoint()} ({exc or type(exc).__name__}); installed models still run offline") from exc
    except OSError as exc:  # the Hugging Face folder (token, cache) cannot be read or written
        raise DownloadError(f"{what}: cannot use {exc.filename or 'the Hugging Face folder'}: {exc.strerror or exc} "
                            "(HF_HOME moves it)") from exc


def http_timeout(read: float):
    """Connect within 10 s, and no read may wait longer than `read` seconds."""
    return http_client().Timeout(read, connect=10.0)


def http_client():
    """The HTTP client module huggingface_hub is built on (httpx, or httpx2 in huggingface_hub 2)."""
    from huggingface_hub import get_session

    return importlib.import_module(type(get_session()).__module__.split(".")[0])


def remote_file(repo_id: str, filename: str, revision: str = "main") -> RemoteFile:
    """Name, size, ETag and commit of one file on the Hub: one HEAD request."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    with hub_errors(f"{repo_id}/{filename}"):
        meta = get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision))
    if not meta.etag or not meta.commit_hash or meta.size is None:
        raise DownloadError(f"{repo_id}/{filename}: the server did not send the file's ETag, commit and size")
    return _checked(RemoteFile(repo_id, filename, revision, meta.commit_hash, meta.etag, meta.size, meta.location))


def list_ggufs(repo_id: str, revision: str = "main") -> dict[str, int]:
    """Every .gguf file in a repo, with its size."""
    return {name: size for name, size in list_files(repo_id, revision).items() if name.endswith(".gguf")}


MAX_LISTED_FILES = 100_000


def list_files(repo_id: str, revision: str = "main") -> dict[str, int]:
    """Every file in a repo, with its size (names checked to stay inside the repo)."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    _check_reachable(repo_id)
    files: dict[str, int] = {}
    with hub_errors(repo_id):
        for entry in HfApi(endpoint=endpoint()).list_repo_tree(repo_id, recursive=True, revision=revision):
            if isinstance(entry, RepoFile):
                files[check_repo_path(entry.path, repo_id)] = entry.size
                if len(files) > MAX_LISTED_FILES:
                    raise DownloadError(f"{repo_id}: the listing has more than {MAX_LISTED_FILES} files")
    return files


def _check_reachable(what: str) -> None:
    """One quick request, no retries: huggingface_hub's listing retries a refused connection five
    times with backoff (24 s, a warning line each), where one line at once says it all."""
    import logging

    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE:
        return  # huggingface_hub itself says "offline" without trying
    logging.getLogger("huggingface_hub.utils._http").setLevel(logging.ERROR)
    with hub_errors(what):
        get_session().head(endpoint(), timeout=http_timeout(5.0), follow_redirects=False)


def cached_file(repo_id: str, filename: str, revision: str = "main") -> Path | None:
    """The file if this revision of it is in the Hugging Face cache; no network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, revision=revision)
    return Path(found) if isinstance(found, str) else None


def storage_folder(repo_id: str) -> Path:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")


def partial_bytes(remote: RemoteFile) -> int:
    path = storage_folder(remote.repo_id) / "blobs" / f"{remote.etag}.incomplete"
    return path.stat().st_size if path.exists() else 0


def free_disk(where: Path) -> int:
    """Free bytes on the disk that holds `where`, or will once it is created."""
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_disk(needed: int, where: Path | None = None) -> None:
    """Refuse, before any byte is written, what the disk (the cache's, by default) cannot hold."""
    from huggingface_hub import constants

    where = where or Path(constants.HF_HUB_CACHE)
    free = free_disk(where)
    if needed + DISK_HEADROOM > free:
        raise DiskSpaceError(needed, free, where)


def download(remote: RemoteFile, progress: Progress | None = None) -> Path:
    """Fetch one file into the Hugging Face cache, resuming and verifying; return its snapshot path."""
    from filelock import FileLock
    from huggingface_hub import constants

    remote = _checked(remote)
    storage = storage_folder(remote.repo_id)
    blob = storage / "blobs" / remote.etag
    pointer = storage / "snapshots" / remote.commit / remote.filename
    lock = Path(constants.HF_HUB_CACHE) / ".locks" / storage.name / f"{remote.etag}.lock"
    if not (inside(storage, constants.HF_HUB_CACHE) and inside(blob.parent, storage) and inside(pointer.parent, storage)):
        raise DownloadError(f"{remote.repo_id}/{remote.filename}: its cache paths would leave {constants.HF_HUB_CACHE}")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        blob.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot write the Hugging Face cache {constants.HF_HUB_CACHE}: {exc.strerror or exc} "
                            "(HF_HOME moves it)") from None
    with FileLock(lock):  # a second pull of the same file waits here, then finds the blob in place
        if not blob.exists():
            _fetch_verified(remote, blob, progress)
        elif progress:
            progress(remote.size, remote.size)
        link_snapshot(blob, pointer)
        if remote.revision != remote.commit:
            ref = storage / "refs" / remote.revision
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(remote.commit)
    return pointer


def _fetch_verified(remote: RemoteFile, blob: Path, progress: Progress | None) -> None:
    partial = blob.with_name(f"{remote.etag}.incomplete")
    if partial.exists() and partial.stat().st_size > remote.size:
        partial.unlink()  # not a prefix of this file
    done = partial.stat().st_size if partial.exists() else 0
    check_disk(remote.size - done)
    name = f"{remote.repo_id}/{remote.filename}"
    hasher = _Hasher(remote)
    try:
        with open(partial, "ab") as out:
            hasher.feed_file(partial, done)
            failures = 0
            furthest = done  # progress is passing the furthest byte ever held, not refilling after a restart
            while done < remote.size:
                error = None
                try:
                    _transfer(remote, out, done, hasher, progress)
                except _Restart as restart:
                    # Counted as a failed attempt: a server that ignores Range cannot loop for ever.
                    out.seek(0)
                    out.truncate(0)
                    hasher.hexdigest()  # ends the old hasher's thread
                    hasher, done, error = _Hasher(remote), 0, restart
                except http_client().TransportError as exc:
                    error = exc
                out.flush()
                done = out.tell()  # what reached the file, however the transfer ended
                failures = 0 if done > furthest else failures + 1
                furthest = max(furthest, done)
                if failures >= MAX_ATTEMPTS_WITHOUT_PROGRESS:
                    reason = f"{error or type(error).__name__}" if error else "the server sends no more bytes"
                    raise DownloadError(f"{name}: the transfer keeps failing ({reason}); {done / 1e6:.0f} of "
                                        f"{remote.size / 1e6:.0f} MB are kept: run the same command to resume")
                if failures:
                    time.sleep(min(2 ** (failures - 1), 30))
    except LocalLLMError:
        raise
    except OSError as exc:  # the disk, not the network (those are caught above)
        raise DownloadError(f"{name}: cannot write {partial}: {exc.strerror or exc}") from exc
    digest = hasher.hexdigest()
    if digest != remote.etag:
        partial.unlink()
        raise DownloadError(
            f"{name}: the downloaded bytes do not match the Hub's checksum "
            f"({digest[:12]}... instead of {remote.etag[:12]}...); the file was deleted and not installed"
        )
    os.chmod(partial, 0o666 & ~_umask())
    os.replace(partial, blob)


class _Restart(Exception):
    """The server ignored the Range header (or refused it): start again from byte 0."""

    def __str__(self) -> str:
        return "the server does not resume (it ignores or refuses the byte range)"


def _transfer(remote: RemoteFile, out, done: int, hasher: _Hasher, progress: Progress | None) -> None:
    """One GET from byte ``done`` to the end, or until the connection fails."""
    from huggingface_hub import constants, errors, get_session
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

    name = f"{remote.repo_id}/{remote.filename}"
    headers = {"Accept-Encoding": "identity"}
    if done:
        headers["Range"] = f"bytes={done}-"
    # No byte for HF_HUB_DOWNLOAD_TIMEOUT seconds (huggingface_hub's knob, 10 by default): a stall;
    # the connection is dropped and the transfer resumes from the last byte on disk.
    timeout = http_timeout(constants.HF_HUB_DOWNLOAD_TIMEOUT)
    with follow(get_session(), remote.url, headers, build_hf_headers(), timeout, name) as response:
        if response.status_code == 416 and done == remote.size:
            return
        if response.status_code == 416 or (done and response.status_code == 200):
            raise _Restart()
        try:
            hf_raise_for_status(response)
        except errors.HfHubHTTPError:
            response.read()
            with hub_errors(f"{remote.repo_id}/{remote.filename}"):
                raise
        for chunk in response.iter_bytes(CHUNK):
            if done + len(chunk) > remote.size:  # never more than the advertised size on disk
                raise DownloadError(f"{name}: the server sent more than the {remote.size} bytes it announced; "
                                    "the file was not installed")
            out.write(chunk)
            hasher.feed(chunk)
            done += len(chunk)
            if progress:
                progress(done, remote.size)


@contextmanager
def follow(session, url: str, headers: dict, auth: dict, timeout, name: str):
    """GET url, following redirects ourselves: the Hub token goes only to the endpoint's own
    origin, never to a host it redirects to (nor to one a file's location already names)."""
    for _ in range(MAX_REDIRECTS + 1):
        sent = {**headers, **(auth if _origin(url) == _origin(endpoint()) else {})}
        with session.stream("GET", url, headers=sent, timeout=timeout, follow_redirects=False) as response:
            if response.status_code in (301, 302, 303, 307, 308) and "location" in response.headers:
                url = str(response.url.join(response.headers["location"]))
                continue
            yield response
            return
    raise DownloadError(f"{name}: more than {MAX_REDIRECTS} redirects (a redirect loop?)")


def _origin(url: str) -> tuple[str, str, int | None]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())


class _Hasher:
    """Hashes on a second thread, so hashing overlaps the transfer (hashlib releases the GIL)."""

    def __init__(self, remote: RemoteFile):
        if remote.sha256:
            self._hash = hashlib.sha256()
        else:  # a file stored in git: its ETag is the git blob id
            self._hash = hashlib.sha1(f"blob {remote.size}\0".encode())
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._hash.update(chunk)

    def feed(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def feed_file(self, path: Path, length: int) -> None:
        with open(path, "rb") as f:
            while length > 0 and (chunk := f.read(min(CHUNK, length))):
                self.feed(chunk)
                length -= len(chunk)

    def hexdigest(self) -> str:
        self._queue.put(None)
        self._thread.join()
        return self._hash.hexdigest()


def link_snapshot(blob: Path, pointer: Path) -> None:
    """The snapshot entry huggingface_hub's cache expects: a relative symlink to the blob."""
    if pointer.exists():
        return
    pointer.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except OSError:  # no symlinks (Windows without developer mode): huggingface_hub copies too
        shutil.copyfile(blob, pointer)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
