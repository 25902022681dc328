"""A model served by another engine's OpenAI-compatible API (vLLM): localllm renders the chat
template and tokenizes with the checkpoint's own tokenizer, sends token ids to
/v1/completions, and streams the text back as events. The remote engine does the batching, so
every request gets its own streaming connection, read on a thread; the engine thread only hands
their events on.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ...errors import GenerationError, ModelLoadError, UsageError
from ...events import Event, Finished, Token, Usage
from ...formats import is_checkpoint
from ..base import Capabilities, SequenceRequest, TokenizerChat

MAX_REMOTE_SLOTS = 256
STEP_WAIT_S = 0.02
NO_GRAMMAR = "structured output is not passed to a remote engine yet"


class RemoteModel(TokenizerChat):
    """A checkpoint folder (for its tokenizer and chat template) served at `url`."""

    can_embed = False
    n_gpu_layers = -1
    capabilities = Capabilities(batching=True, token_input=True)

    def __init__(self, path: Path, url: str, n_ctx: int | None):
        from ...hub import http_client

        httpx = http_client()  # huggingface_hub's own client (httpx, or httpx2 from version 2)
        from transformers import AutoTokenizer

        self.path, self.url = path, url.rstrip("/")
        try:
            listed = httpx.get(f"{self.url}/v1/models", timeout=10).json()["data"]
            self.name = listed[0]["id"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
            raise ModelLoadError(path, f"the engine at {self.url} does not answer /v1/models ({exc})") from None
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self.n_vocab = len(self._tokenizer)
        self.n_ctx_train = int(getattr(self._tokenizer, "model_max_length", 0) or 0) or 4096
        self.n_ctx = n_ctx or min(self.n_ctx_train, 32768)
        self.n_threads = 0

    def special_token(self, text: str) -> int | None:
        raise UsageError(NO_GRAMMAR)  # asked only for a grammar, which is refused here

    def generate(self, prompt: str | Sequence[int], sampling) -> Iterator[Event]:
        raise UsageError("a remote engine serves through `localllm serve`, not one prompt at a time")

    def embed(self, texts):
        raise UsageError(f"{self.path.name} is not an embedding model")

    def batcher(self) -> RemoteBatcher:
        return RemoteBatcher(self)

    def close(self) -> None:
        pass


class RemoteBatcher:
    slots = MAX_REMOTE_SLOTS

    def __init__(self, model: RemoteModel):
        self._model = model
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._running: set[SequenceRequest] = set()

    def free_slots(self) -> int:
        return self.slots - len(self._running)

    def busy(self) -> bool:
        return bool(self._running)

    def add(self, request: SequenceRequest) -> None:
        self._running.add(request)
        threading.Thread(target=self._stream, args=(request,), daemon=True, name="localllm-remote").start()

    def step(self) -> None:
        """Hand on what the connections received, waiting briefly when nothing has."""
        try:
            item = self._events.get(timeout=STEP_WAIT_S)
        except queue.Empty:
            return
        while True:
            request, event = item
            if isinstance(event, (Finished, Exception)):
                self._running.discard(request)
            request.emit(event)
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                return

    def _stream(self, request: SequenceRequest) -> None:
        """On its own thread: one streaming /v1/completions request."""
        from ...hub import http_client

        httpx = http_client()  # huggingface_hub's own client (httpx, or httpx2 from version 2)

        s = request.sampling
        body = {"model": self._model.name, "prompt": request.tokens, "stream": True,
                "stream_options": {"include_usage": True}, "max_tokens": s.max_tokens or self._model.n_ctx - len(request.tokens),
                "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k, "min_p": s.min_p,
                "repetition_penalty": s.repeat_penalty, "presence_penalty": s.presence_penalty,
                "frequency_penalty": s.frequency_penalty, "seed": s.seed, "ignore_eos": s.ignore_eos}
        if s.stop:
            body["stop"] = list(s.stop)
        started = time.perf_counter()
        first = None
        reason, usage, stop_sequence = "stop", None, None
        try:
            with httpx.stream("POST", f"{self._model.url}/v1/completions", json=body, timeout=httpx.Timeout(30, read=600)) as response:
                if response.status_code != 200:
                    raise GenerationError(f"the engine answered {response.status_code}: {response.read()[:300]!r}")
                for line in response.iter_lines():
                    if request.cancelled:
                        self._events.put((request, Finished.cancelled(len(request.tokens))))
                        return
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        if choice.get("text"):
                            first = first or time.perf_counter()
                            self._events.put((request, Token(choice["text"])))
                        reason = choice.get("finish_reason") or reason
                        if isinstance(choice.get("stop_reason"), str):  # vLLM's: the stop string met (a token id else)
                            stop_sequence = choice["stop_reason"]
        except (httpx.HTTPError, ValueError, GenerationError) as exc:
            self._events.put((request, exc if isinstance(exc, GenerationError) else GenerationError(f"the engine's stream broke: {exc}")))
            return
        end = time.perf_counter()
        prompt_tokens = (usage or {}).get("prompt_tokens", len(request.tokens))
        completion = (usage or {}).get("completion_tokens", 0)
        cached = ((usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        self._events.put((request, Finished.measured("length" if reason == "length" else "stop",
                                                     Usage(prompt_tokens, completion, cached), s.seed or 0,
                                                     started, first, first, end, stop_sequence)))

    def fail_all(self, message: str) -> None:
        for request in list(self._running):
            request.cancel()
            self._running.discard(request)
            request.emit(GenerationError(message))

    def idle(self) -> bool:
        return False

    def close(self) -> None:
        for request in list(self._running):
            request.cancel()


class RemoteBackend:
    """Serving through another engine: `serve --engine vllm` (localllm.backends.vllm.plan starts it)."""

    name = "vllm"
    capabilities = RemoteModel.capabilities

    def __init__(self, url: str):
        self.url = url

    @staticmethod
    def can_load(path: Path) -> bool:
        return is_checkpoint(path)

    @staticmethod
    def prepare(path: Path, options, notify):
        return options

    @staticmethod
    def smaller(current, asked):
        return None

    @staticmethod
    def out_of_memory(reason: str) -> bool:
        return False

    def load(self, path: Path, options) -> RemoteModel:
        return RemoteModel(path, self.url, options.n_ctx)
