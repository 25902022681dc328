"""The engine's events on the event loop: from the engine thread to each request's queue,
with one wake-up of the loop for whatever has arrived since the last one."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable

from starlette.requests import Request

from ..events import Finished


class Mailbox:
    """Carries events from the engine thread to the event loop with one wake-up for whatever
    has arrived since the last one, however many sequences and tokens that is: on a machine
    whose cores all run llama.cpp, every wake-up of the loop takes time from it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, finished: Callable[[Finished], None] = lambda event: None):
        self.loop = loop
        self.finished = finished  # told of each generation's end, on the engine thread (the metrics)
        self._items: deque = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def post(self, queue: asyncio.Queue, event) -> None:
        """Called on the engine thread."""
        if type(event) is Finished:
            self.finished(event)
        with self._lock:
            self._items.append((queue, event))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the event loop has closed: nobody is listening
            pass

    def _deliver(self) -> None:
        with self._lock:
            items, self._items = self._items, deque()
            self._scheduled = False
        for queue, event in items:
            queue.put_nowait(event)


class Events:
    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox
        self.queue: asyncio.Queue = asyncio.Queue()

    def put(self, event) -> None:
        """Called on the engine thread."""
        self.mailbox.post(self.queue, event)

    async def next(self, request: Request | None):
        """The next event. Streaming responses notice a client gone by themselves (Starlette
        cancels them); for the others, `request` is polled for a disconnect while waiting."""
        if request is None:
            event = await self.queue.get()
        else:
            while True:
                try:
                    event = await asyncio.wait_for(self.queue.get(), 1.0)
                    break
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        raise asyncio.CancelledError from None
        if isinstance(event, Exception):
            raise event
        return event
