"""The engine: one thread that owns the loaded models and makes every llama.cpp call.

Every load, generation and unload runs on this thread. An OpenMP build of llama.cpp gives each
calling thread its own team of compute threads, and while two teams exist libgomp stops
spinning between tokens: generating from a second thread measured 15% slower.

Two kinds of work reach it:
- jobs (`submit`): any callable, run in order; the chat app runs its loads and answers this way;
- sequences (`generate`): requests for a served model, decoded together by that model's
  batcher, one step for all of them at a time; new ones join between steps, and beyond the
  batcher's slots they wait in a bounded queue.

Served models are loaded on demand (`acquire`), unloaded after `keep_alive` seconds unused,
and unloaded early when another model would not fit beside them.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from .backends.base import Batcher, SequenceRequest
from .errors import GenerationError, LocalLLMError, ModelLoadError
from .options import LoadOptions
from .printable import printable

_STOP = object()
IDLE_WAKE_S = 3600.0  # the longest the idle thread sleeps before looking at keep-alives again


class QueueFullError(LocalLLMError):
    """Every slot is busy and the queue of waiting requests is full."""

    exit_code = 6

    def __init__(self, slots: int, waiting: int):
        self.slots, self.waiting = slots, waiting
        super().__init__(f"busy: all {slots} slots are generating and {waiting} requests are waiting (the queue is full); "
                         "retry shortly")


class BusyError(LocalLLMError):
    """Another model is busy and the one asked for does not fit beside it."""

    exit_code = 4

    def __init__(self, wanted: str, busy: list[str]):
        self.wanted, self.busy = wanted, busy
        super().__init__(f"{wanted} does not fit in memory while {', '.join(busy)} is answering requests")


class EngineStoppedError(LocalLLMError):
    """The engine thread ended unexpectedly: nothing more can be generated in this process."""

    exit_code = 1

    def __init__(self, why: str):
        self.why = why
        super().__init__(f"the engine has stopped ({why}); restart the server")


def _report(exc: Exception) -> None:
    sys.stderr.write(f"localllm: engine: {type(exc).__name__}: {printable(str(exc))[:300]}\n")


@dataclass(eq=False)
class Served:
    """A model loaded for serving, with its batcher and its queue."""

    path: Path
    model: object  # localllm.model.Model
    batcher: Batcher
    last_used: float = field(default_factory=time.monotonic)
    holds: int = 0  # callers between acquire() and release()
    keep_alive: float | None | str = "engine"  # a request's own (Ollama's keep_alive), else the engine's
    waiting: deque = field(default_factory=deque)
    queued: int = 0  # waiting, plus submitted but not yet seen by the engine thread

    def idle(self) -> bool:
        return not self.holds and not self.queued and not self.batcher.busy()


class Engine:
    def __init__(self, keep_alive: float | None = None, queue_limit: int = 64,
                 loader: Callable[[Path, LoadOptions], object] | None = None):
        self.keep_alive = keep_alive  # seconds; None keeps models until shutdown
        self.queue_limit = queue_limit
        self._loader = loader or _load
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._served: dict[Path, Served] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self._died: str | None = None
        self._chores = False  # the batchers may have work kept for idle time (Batcher.idle)
        self.loads = 0  # models loaded since the start (the server's /metrics)

    # ---- any thread -----------------------------------------------------------------------
    def submit(self, fn: Callable, *args) -> Future:
        """Run fn(*args) on the engine thread, after the jobs before it."""
        future: Future = Future()
        with self._lock:
            if self._died is not None:
                raise EngineStoppedError(self._died)
            if self._closed:
                raise RuntimeError("the engine has shut down")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="localllm-engine", daemon=True)
                self._thread.start()
            self._jobs.put((future, fn, args))
        return future

    def acquire(self, ref: str | None, options: LoadOptions) -> Future:
        """The Served entry for a model reference, loading it if needed. Pair with release()."""
        return self.submit(self._acquire, ref, options)

    def release(self, served: Served, keep_alive: float | None | str = "unchanged") -> None:
        """End a hold; `keep_alive` (seconds, None for ever) replaces how long it stays unused."""
        with self._lock:
            served.holds -= 1
            served.last_used = time.monotonic()
            if keep_alive != "unchanged":
                served.keep_alive = keep_alive
        self._wake()

    def generate(self, served: Served, request: SequenceRequest) -> None:
        """Queue a sequence on a served model; QueueFullError when the queue is full."""
        with self._lock:
            if served.queued >= self.queue_limit + max(0, served.batcher.free_slots()):
                raise QueueFullError(served.batcher.slots, served.queued)
            served.queued += 1
        self.submit(self._enqueue, served, request)

    def cancel_all(self) -> None:
        """Stop every running and waiting sequence (their callers get a "cancelled" Finished)."""
        try:
            self.submit(self._cancel_all)
        except RuntimeError:
            pass  # already shut down: nothing runs

    def loaded(self) -> list[Served]:
        with self._lock:
            return list(self._served.values())

    def shutdown(self, wait: bool = True) -> None:
        """Cancel every sequence, unload every served model, and stop the thread (after the
        jobs already submitted, which finish first)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._jobs.put(_STOP)
        if thread is not None and wait:
            thread.join()

    def _wake(self) -> None:
        with self._lock:
            if self._thread is not None and not self._closed:
                self._jobs.put((Future(), lambda: None, ()))

    # ---- the engine thread ----------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                try:
                    if not self._step():
                        break
                except Exception as exc:  # reported; the loop goes on (after a breath, should it recur)
                    _report(exc)
                    time.sleep(0.05)
            for served in list(self._served.values()):
                self._unload(served)
        except BaseException as exc:  # recorded for every caller (see _die) and said once
            self._die(exc)
            sys.stderr.write(f"localllm: the engine thread stopped: {printable(self._died)}\n")

    def _step(self) -> bool:
        """One turn of the loop: a job, or one decode step of every busy model. False: stop.
        An error here fails what it was working on and the loop goes on; nothing a request
        carries may end the thread that every request needs."""
        busy = [s for s in self._served.values() if s.batcher.busy() or s.waiting]
        try:
            item = self._jobs.get_nowait() if busy or self._chores else self._jobs.get(timeout=self._idle_wait())
        except queue.Empty:
            item = None
        if item is _STOP:
            return False
        if item is not None:
            self._run(*item)
            return True  # take every waiting job before the next step: new requests join sooner
        if not busy and self._chores:  # idle: one piece of the batchers' kept work, then look again
            self._chores = any(served.batcher.idle() for served in list(self._served.values()))
            return True
        self._chores = bool(busy)
        for served in busy:
            try:
                self._admit(served)
                served.batcher.step()
                self._admit(served)
            except Exception as exc:  # a bug must fail these requests, not stop the engine
                _report(exc)
                served.batcher.fail_all(f"internal error while generating: {type(exc).__name__}: {exc}")
        self._expire()
        return True

    def _die(self, exc: BaseException) -> None:
        """The thread is ending without being asked to: every job waiting, and every one
        submitted from now on, fails with EngineStoppedError instead of waiting for ever."""
        with self._lock:
            self._died = f"{type(exc).__name__}: {exc}"[:300]
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP and item[0].set_running_or_notify_cancel():
                item[0].set_exception(EngineStoppedError(self._died))
        for served in self._served.values():
            try:
                served.batcher.fail_all(f"the engine stopped: {self._died}")
            except Exception:  # best effort: the engine is gone either way
                pass

    def health(self) -> str | None:
        """None while the engine thread can take work, else why it cannot."""
        with self._lock:
            return self._died

    @staticmethod
    def _run(future: Future, fn: Callable, args: tuple) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to whoever waits on the future
            future.set_exception(exc)

    def keep_alive_of(self, served: Served) -> float | None:
        return self.keep_alive if served.keep_alive == "engine" else served.keep_alive

    def _idle_wait(self) -> float | None:
        waits = [s.last_used + self.keep_alive_of(s) - time.monotonic() for s in self._served.values()
                 if self.keep_alive_of(s) is not None]
        # Capped, so a wait can never be one that the queue's timeout cannot represent.
        return min(max(0.05, min(waits)), IDLE_WAKE_S) if waits else IDLE_WAKE_S

    def _enqueue(self, served: Served, request: SequenceRequest) -> None:
        served.waiting.append(request)
        self._admit(served)

    def _admit(self, served: Served) -> None:
        while served.waiting and served.batcher.free_slots():
            request = served.waiting.popleft()
            with self._lock:
                served.queued -= 1
            if request.cancelled:
                continue
            try:
                served.batcher.add(request)
            except LocalLLMError as exc:  # e.g. a grammar this vocabulary cannot follow
                request.emit(exc)

    def _cancel_all(self) -> None:
        for served in self._served.values():
            served.batcher.close()
            self._drop_waiting(served, "the server is shutting down")

    def _drop_waiting(self, served: Served, why: str) -> None:
        while served.waiting:
            with self._lock:
                served.queued -= 1
            served.waiting.popleft().emit(GenerationError(why))

    def _expire(self) -> None:
        now = time.monotonic()
        for served in list(self._served.values()):
            keep_alive = self.keep_alive_of(served)
            with self._lock:
                expired = keep_alive is not None and served.idle() and now - served.last_used >= keep_alive
            if expired:
                self._unload(served)

    def _acquire(self, ref: str | None, options: LoadOptions) -> Served:
        from .registry import resolve

        path = resolve(ref).absolute()
        served = self._served.get(path)
        if served is None:
            served = self._load(path, ref or path.name, options)
        with self._lock:
            served.holds += 1
            served.last_used = time.monotonic()
        return served

    def _load(self, path: Path, name: str, options: LoadOptions) -> Served:
        """Load beside the models already here if the planner says it fits, else after
        unloading the idle ones; refused while the others are busy."""
        try:
            model = self._loader(path, options)
        except ModelLoadError as exc:
            idle = [s for s in self._served.values() if s.idle()]
            if not self._served or not memory_problem(exc):
                raise
            for served in idle:
                self._unload(served)
            if self._served:
                raise BusyError(name, [s.path.name for s in self._served.values()]) from exc
            model = self._loader(path, options)
        served = Served(path, model, model.batcher())
        self._served[path] = served
        self.loads += 1
        return served

    def _unload(self, served: Served) -> None:
        served.batcher.close()
        self._drop_waiting(served, "the model was unloaded before this request started")
        served.model.close()
        self._served.pop(served.path, None)


def memory_problem(exc: ModelLoadError) -> bool:
    from .backends.llamacpp.load import out_of_memory

    return "does not fit" in exc.reason or out_of_memory(exc.reason)


def _load(path: Path, options: LoadOptions):
    from .model import load_model

    return load_model(path, options)
