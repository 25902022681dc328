"""Prompt states kept on disk, so that a prompt read once is not read again (issue 27).

A state is one sequence's KV cache as llama.cpp copies it out (`llama_state_seq_get_data`), saved
with the tokens it holds. A new prompt that starts with those tokens loads it and reads only the
rest. It is used only when everything that shapes the cache is the same: the model file itself
(resolved path, size, modification time, inode: identity, not name), the window, the KV type, flash
attention, the batch sizes and the llama.cpp build; the saved tokens are compared with the prompt's,
and the state's bytes with their SHA-256. Anything else (truncated, flipped, foreign) is ignored,
with one line on stderr under --verbose.

Two ways to use a state, both exact at temperature 0 (LoadOptions.prompt_cache):
- "live" (chat, serve): every shared token is restored, so the answer is the one the process that
  saved it would have given had it never stopped: the same cells, bit for bit.
- "cold" (run): the answer is the one a fresh read of the whole prompt gives. A prompt is read in
  steps of a fixed size from its first token (LlamaCppModel._read_step), and a cell's value depends
  on the batch it was computed in (the kernels sum in another order for another batch size), so only
  the whole steps that a cold read of the saved prompt computed (header "cold") are restored, up to
  the last whole step the new prompt shares; the rest is read as a cold read would read it.

Files are private (0600 in a 0700 folder) under the cache folder; the least recently used go first
once the folder passes its budget; a disk that is full only means nothing is saved.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import queue
import struct
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from ...config import cache_dir, private_dir
from ...errors import LocalLLMError
from ..base import reusable_prefix

MAGIC = b"LLSTATE2"
MIN_TOKENS = 256  # a shorter prompt reads faster than a file loads
DEFAULT_BUDGET = 4 * 2**30
MAX_HEADER = 1 << 16
ENV_BUDGET = "LOCALLLM_PROMPT_CACHE_BYTES"
ENV_FOLDER = "LOCALLLM_PROMPT_CACHE"
CONFIG_BUDGET = "prompt_cache_bytes"
MAX_PENDING = 2  # states waiting to be written; past this a new one is dropped (memory, not correctness)


@dataclass(frozen=True)
class Saved:
    tokens: list[int]
    state: bytes
    cold: int  # the first `cold` tokens' cells are what a cold read of them computed


def folder() -> Path:
    return Path(os.environ[ENV_FOLDER]).expanduser() if os.environ.get(ENV_FOLDER) else cache_dir() / "prompt-states"


def budget() -> int:
    """Bytes the folder may hold: LOCALLLM_PROMPT_CACHE_BYTES, else the setting `localllm cache
    --budget` saved, else DEFAULT_BUDGET."""
    value = os.environ.get(ENV_BUDGET, "")
    if value.isdigit():
        return int(value)
    from ...config import load_config

    try:
        saved = load_config().get(CONFIG_BUDGET)
    except LocalLLMError:  # a broken settings file is reported by the commands that read it
        saved = None
    return saved if isinstance(saved, int) and saved >= 0 else DEFAULT_BUDGET


def key(path: Path, settings: dict) -> str:
    """What a saved state must have been made with to be used here."""
    info = path.resolve().stat()
    identity = {"path": str(path.resolve()), "size": info.st_size, "mtime_ns": info.st_mtime_ns, "inode": info.st_ino,
                **settings}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


class StateCache:
    def __init__(self, key: str, verbose: bool = False):
        self.key, self.verbose = key, verbose

    def say(self, text: str) -> None:
        if self.verbose:
            sys.stderr.write(f"localllm: prompt cache: {text}\n")

    def find(self, tokens: list[int]) -> Saved | None:
        """The saved state sharing the longest prefix with `tokens` (checked whole), or None."""
        best: tuple[int, Path] | None = None
        for path in sorted(folder().glob(f"{self.key}-*.state")) if folder().is_dir() else ():
            try:
                saved_tokens = self._read(path, with_state=False).tokens
            except (OSError, ValueError) as exc:
                self.say(f"ignoring {path.name}: {exc}")
                continue
            shared = reusable_prefix(saved_tokens, tokens)
            if shared >= MIN_TOKENS and (best is None or shared > best[0]):
                best = (shared, path)
        if best is None:
            return None
        try:
            saved = self._read(best[1], with_state=True)
        except (OSError, ValueError) as exc:
            self.say(f"ignoring {best[1].name}: {exc}")
            return None
        os.utime(best[1])  # the least recently used go first
        return saved

    def _read(self, path: Path, with_state: bool) -> Saved:
        with path.open("rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise ValueError("not a saved prompt state")
            (length,) = struct.unpack("<I", f.read(4))
            if length > MAX_HEADER:
                raise ValueError("its header is too long")
            header = json.loads(f.read(length))
            if not isinstance(header, dict) or header.get("key") != self.key:
                raise ValueError("made for another model or other settings")
            n, size, cold = header.get("n_tokens"), header.get("state_bytes"), header.get("cold")
            if not (isinstance(n, int) and isinstance(size, int) and isinstance(cold, int) and 0 < n and 0 < size
                    and 0 <= cold <= n):
                raise ValueError("its header is malformed")
            raw = f.read(4 * n)
            if len(raw) != 4 * n:
                raise ValueError("it is truncated")
            tokens = list(struct.unpack(f"<{n}i", raw))
            if not with_state:
                return Saved(tokens, b"", cold)
            state = f.read(size + 1)
        if len(state) != size:
            raise ValueError("it is truncated" if len(state) < size else "it is longer than its header says")
        if hashlib.sha256(state).hexdigest() != header.get("sha256"):
            raise ValueError("its bytes are not the ones saved")
        return Saved(tokens, state, cold)

    def save_later(self, tokens: list[int], state, cold: int = 0) -> None:
        """Queue a state for the writer thread: hashing and writing 140 MB takes half a second,
        which must not fall on the engine thread (it would delay the next request). `state` is
        any buffer, handed over (not copied). flush() waits for the queue."""
        if _writes.qsize() >= MAX_PENDING:
            self.say("not saved: earlier states are still being written")
            return
        _writes.put((self, tokens, state, cold))
        _start_writer()

    def save(self, tokens: list[int], state, cold: int = 0) -> None:
        """Keep this state (replacing any saved for a prefix of its tokens); never raises."""
        limit = budget()
        if limit == 0:
            return
        try:
            where = private_dir(folder())
            name = hashlib.sha256(struct.pack(f"<{len(tokens)}i", *tokens)).hexdigest()[:24]
            target = where / f"{self.key}-{name}.state"
            view = memoryview(state).cast("B")
            digest = hashlib.sha256()
            for piece in _quiet_slices(view):
                digest.update(piece)
            header = json.dumps({"key": self.key, "n_tokens": len(tokens), "state_bytes": len(view), "cold": cold,
                                 "sha256": digest.hexdigest()}).encode()
            partial = target.with_suffix(".partial")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC + struct.pack("<I", len(header)) + header + struct.pack(f"<{len(tokens)}i", *tokens))
                for piece in _quiet_slices(view):
                    f.write(piece)
            os.replace(partial, target)
            for other in where.glob(f"{self.key}-*.state"):  # a state whose tokens this one extends is spent
                if other != target and self._is_prefix_of(other, tokens):
                    other.unlink(missing_ok=True)
            _evict(where, limit)
        except OSError as exc:
            self.say(f"not saved: {exc.strerror or exc}")

    def _is_prefix_of(self, path: Path, tokens: list[int]) -> bool:
        try:
            saved = self._read(path, with_state=False).tokens
        except (OSError, ValueError):
            return False
        return len(saved) <= len(tokens) and tokens[:len(saved)] == saved


_writes: queue.Queue = queue.Queue()
_writer: threading.Thread | None = None
_writer_lock = threading.Lock()


def _start_writer() -> None:
    global _writer
    with _writer_lock:
        if _writer is None:
            _writer = threading.Thread(target=_write_queued, name="localllm-prompt-states", daemon=True)
            _writer.start()
            atexit.register(flush)  # daemon threads stop at exit: what is queued is written first


# Set while no engine is evaluating. Hashing and writing a state on a core that llama.cpp's OpenMP
# team is using stalls the team: the next request's first token came 0.3 s later (starter, serve,
# 3,700-token prompt states; a lower nice value did not help). So writes go in slices, each only
# while the engines are quiet (engines_busy()).
_quiet = threading.Event()
_quiet.set()
SLICE = 4 << 20


def engines_busy(busy: bool) -> None:
    """An engine starts evaluating (True) or has nothing to evaluate (False)."""
    if busy:
        if _quiet.is_set():  # a plain read: this runs before every decode step of `serve`
            _quiet.clear()
    elif not _quiet.is_set():
        _quiet.set()


def _quiet_slices(view: memoryview):
    for start in range(0, len(view), SLICE):
        _quiet.wait()
        yield view[start:start + SLICE]


def _write_queued() -> None:
    while True:
        store, tokens, state, cold = _writes.get()
        try:
            store.save(tokens, state, cold)
        finally:
            _writes.task_done()


def flush() -> None:
    """Wait until every queued state is written (before a process ends: `run` exits at once).
    Called by the thread that evaluates, so no engine is busy meanwhile."""
    engines_busy(False)
    _writes.join()


def summary() -> tuple[int, int]:
    """Saved states in the folder, and their bytes."""
    files = list(folder().glob("*.state")) if folder().is_dir() else []
    return len(files), sum(_size(p) for p in files)


def clear() -> tuple[int, int]:
    """Delete every saved state (and any left half-written); how many, and their bytes."""
    count, total = summary()
    for path in (list(folder().glob("*.state")) + list(folder().glob("*.partial"))) if folder().is_dir() else []:
        path.unlink(missing_ok=True)
    return count, total


def shrink_to_budget() -> None:
    if folder().is_dir():
        _evict(folder(), budget())


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # gone meanwhile (another process evicted it)
        return 0


def _evict(where: Path, limit: int) -> None:
    files = sorted(where.glob("*.state"), key=lambda p: p.stat().st_mtime)
    total = sum(p.stat().st_size for p in files)
    for path in files:
        if total <= limit:
            break
        total -= path.stat().st_size
        path.unlink(missing_ok=True)
