"""The engine that serves: batched sequences, the queue, cancellation, keep-alive and making room
for a second model, with the real starter through llama.cpp."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
from conftest import TEST_LOAD
from embedding_gguf import write_embedding_model

from localllm.backends.base import SequenceRequest
from localllm.engine import BusyError, Engine, QueueFullError
from localllm.errors import LocalLLMError, ModelLoadError
from localllm.events import Finished, Token
from localllm.model import load_model
from localllm.options import LoadOptions, SamplingOptions

pytestmark = pytest.mark.slow

SERVE = LoadOptions(n_ctx=1024, n_threads=2, n_seq=2, speculation="off")  # compared with plain decoding: conftest.TEST_LOAD


class Collected:
    def __init__(self) -> None:
        self.events: list = []
        self.done = threading.Event()

    def __call__(self, event) -> None:
        self.events.append(event)
        if isinstance(event, (Finished, LocalLLMError)):
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, Token))

    @property
    def finished(self) -> Finished:
        return self.events[-1]


def request(served, text: str, sink: Collected, **sampling) -> SequenceRequest:
    model = served.model
    tokens = model.tokenize(model.format_chat([{"role": "user", "content": text}]))
    return SequenceRequest(tokens, SamplingOptions(**{"temperature": 0, "max_tokens": 16, **sampling}), sink)


def until(condition, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_sequences_in_one_batch_match_the_single_sequence_path(starter_gguf):
    """Same model, same prompt: the batched decoder with one active sequence gives what
    Model.generate gives (both greedy over the same logits)."""
    engine = Engine()
    try:
        served = engine.acquire(str(starter_gguf), SERVE).result()
        sink = Collected()
        engine.generate(served, request(served, "Name a fruit.", sink))
        assert sink.done.wait(60)
        with load_model(starter_gguf, TEST_LOAD) as alone:
            expected = alone.complete("Name a fruit.", sampling=SamplingOptions(temperature=0, max_tokens=16)).text
        assert sink.text == expected and sink.finished.usage.completion_tokens > 0
        engine.release(served)
    finally:
        engine.shutdown()


def test_a_full_queue_refuses_and_a_cancelled_sequence_frees_its_slot(starter_gguf):
    engine = Engine(queue_limit=1)
    try:
        served = engine.acquire(str(starter_gguf), SERVE).result()
        long = [Collected() for _ in range(3)]
        sequences = [request(served, "Count to a thousand.", sink, max_tokens=900, ignore_eos=True) for sink in long]
        for sequence in sequences:  # two slots and one place in the queue
            engine.generate(served, sequence)
        with pytest.raises(QueueFullError, match="2 slots"):
            engine.generate(served, request(served, "Hi", Collected()))
        assert until(lambda: all(s.events for s in long[:2]))
        sequences[0].cancel()
        assert long[0].done.wait(10) and long[0].finished.reason == "cancelled"
        assert until(lambda: long[2].events)  # the waiting one took the freed slot
        for sequence in sequences[1:]:
            sequence.cancel()
        assert all(s.done.wait(10) for s in long)
        engine.release(served)
    finally:
        engine.shutdown()


def test_a_bad_grammar_fails_its_request_only(starter_gguf):
    engine = Engine()
    try:
        served = engine.acquire(str(starter_gguf), SERVE).result()
        bad, good = Collected(), Collected()
        broken = request(served, "Hi", bad)
        broken.sampling = replace(broken.sampling, grammar="this is not a grammar {")
        engine.generate(served, broken)
        engine.generate(served, request(served, "Hi", good))
        assert bad.done.wait(30) and isinstance(bad.events[-1], LocalLLMError)
        assert good.done.wait(30) and isinstance(good.finished, Finished)
        engine.release(served)
    finally:
        engine.shutdown()


def test_keep_alive_unloads_an_idle_model_but_never_a_held_one(starter_gguf):
    engine = Engine(keep_alive=0.3)
    try:
        served = engine.acquire(str(starter_gguf), SERVE).result()
        time.sleep(0.8)
        assert engine.loaded() == [served], "held by a caller: it stays"
        engine.release(served)
        assert until(lambda: not engine.loaded())
    finally:
        engine.shutdown()


def test_a_second_model_that_does_not_fit_unloads_the_idle_one(starter_gguf, tmp_path):
    """The loader stands in for the planner on a machine with room for one of the two."""
    other = write_embedding_model(starter_gguf, tmp_path / "other.gguf")
    engine: Engine

    def one_at_a_time(path, options):
        if engine.loaded():
            raise ModelLoadError(path, "it does not fit: needs 300 MiB of RAM but 120 MiB is available")
        return load_model(path, options)

    engine = Engine(loader=one_at_a_time)
    try:
        first = engine.acquire(str(starter_gguf), SERVE).result()
        with pytest.raises(BusyError, match="does not fit in memory while"):
            engine.acquire(str(other), SERVE).result()  # the first is still held: refused, not unloaded
        assert engine.loaded() == [first]
        engine.release(first)
        second = engine.acquire(str(other), SERVE).result()
        assert [s.path for s in engine.loaded()] == [second.path] == [other.absolute()]
        engine.release(second)
    finally:
        engine.shutdown()
