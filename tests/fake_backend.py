"""A scripted engine, registered as any engine is (localllm.backends.REGISTRY): for tests of what
sits above the engines (the CLI, the request path) with no llama.cpp and no weights.

Its model is a `.fake` file holding JSON: {"reply": TEXT} answers TEXT to every prompt, {"echo":
true} answers with the prompt itself as the engine received it (so a test sees what the request
path assembled); "delay": seconds per token, for a test that needs an answer still running. Tokens are the UTF-8 bytes of the text (ids 0-255) and END (256); the answer goes
through localllm.generation.sequence.Answer like every engine's, so limits, stop strings and the
end of turn follow the same rules.
"""

from __future__ import annotations

import codecs
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from localllm.backends.base import Capabilities, prompt_tokens
from localllm.backends.serial import SerialBatcher
from localllm.errors import ModelLoadError, UsageError
from localllm.events import Event, Token
from localllm.generation.sequence import Answer
from localllm.options import LoadOptions, SamplingOptions

END = 256
TRAINED = 4096


class FakeBackend:
    name = "fake"
    capabilities = Capabilities(token_input=True)

    @staticmethod
    def can_load(path: Path) -> bool:
        return path.suffix == ".fake"

    @staticmethod
    def prepare(path: Path, options: LoadOptions, notify) -> LoadOptions:
        return replace(options, n_ctx=options.n_ctx or TRAINED)

    @staticmethod
    def smaller(current: LoadOptions, asked: LoadOptions) -> None:
        return None

    @staticmethod
    def out_of_memory(reason: str) -> bool:
        return False

    @staticmethod
    def load(path: Path, options: LoadOptions) -> FakeModel:
        return FakeModel(path, options)


class FakeModel:
    capabilities = FakeBackend.capabilities
    chat_template = None
    can_embed = False
    n_vocab = END + 1
    n_ctx_train = TRAINED
    n_gpu_layers = 0

    def __init__(self, path: Path, options: LoadOptions):
        try:
            self.script = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(path, f"not a fake model ({exc})") from None
        self.path, self.n_ctx, self.n_threads = path, options.n_ctx, options.n_threads or 1

    def tokenize(self, text: str) -> list[int]:
        return list(text.encode())

    def special_token(self, text: str) -> int | None:
        return None

    def format_chat(self, messages: Sequence[dict], **variables) -> str:
        return "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"

    def generate(self, prompt: str | Sequence[int], sampling: SamplingOptions) -> Iterator[Event]:
        return self._answer(prompt_tokens(self, prompt), sampling)

    def _answer(self, tokens: list[int], sampling: SamplingOptions) -> Iterator[Event]:
        reply = bytes(tokens) if self.script.get("echo") else self.script.get("reply", "").encode()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        answer = Answer(sampling, len(tokens), 0, self.n_ctx, END.__eq__, lambda step: decoder.decode(bytes(step)))
        position, delay = 0, float(self.script.get("delay", 0))
        while not answer.done:
            time.sleep(delay)
            token = reply[position % len(reply)] if reply and (position < len(reply) or sampling.ignore_eos) else END
            position += 1
            text, _ = answer.take(token)
            if text:
                yield Token(text)
        held, finished = answer.finish()
        if held:
            yield Token(held)
        yield finished

    def embed(self, texts):
        raise UsageError(f"{self.path.name} is not an embedding model")

    def batcher(self) -> SerialBatcher:
        return SerialBatcher(self)

    def close(self) -> None:
        pass
