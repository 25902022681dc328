"""A batcher for backends that generate one sequence at a time: `serve` runs their requests in
turn, each step taking one event from the running generation."""

from __future__ import annotations

from ..errors import LocalLLMError
from ..events import Finished
from .base import SequenceRequest


class SerialBatcher:
    slots = 1

    def __init__(self, model):
        self._model = model
        self._request: SequenceRequest | None = None
        self._events = None

    def free_slots(self) -> int:
        return 0 if self._request is not None else 1

    def busy(self) -> bool:
        return self._request is not None

    def add(self, request: SequenceRequest) -> None:
        self._request, self._events = request, self._model.generate(request.tokens, request.sampling)

    def step(self) -> None:
        request = self._request
        if request.cancelled:
            self._end(Finished.cancelled(len(request.tokens)))
            return
        try:
            event = next(self._events)
        except LocalLLMError as exc:
            self._end(exc)
            return
        if isinstance(event, Finished):
            self._end(event)
        else:
            request.emit(event)

    def _end(self, last) -> None:
        request, events = self._request, self._events
        self._request = self._events = None
        events.close()
        request.emit(last)

    def fail_all(self, message: str) -> None:
        if self._request is not None:
            from ..errors import GenerationError

            self._end(GenerationError(message))

    def idle(self) -> bool:
        return False

    def close(self) -> None:
        if self._request is not None:
            self._request.cancel()
            self.step()
