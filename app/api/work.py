"""Running the model's work off the event loop, and turning requests away when too many wait.

Generation and extraction block (the batcher's queue, the engine's lock, CPU-bound forward
passes), so every call into the lab runs in a worker thread of the API's own pool and the
server's event loop keeps answering (the UI, health, other API calls). At most
``limits.queue_size`` API requests use the model at once, waiting or running; one more gets 429
with ``Retry-After``, as the UI's queue turns users away when it is full.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import anyio
import anyio.to_thread
from starlette.requests import Request

from app import limits
from app.api.errors import ApiError

T = TypeVar("T")
_END = object()
DISCONNECT_POLL_S = 0.5


class Admission:
    """Counts the API requests using the model; refuses one over ``limits.queue_size``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0
        self._limiter: anyio.CapacityLimiter | None = None

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        """The API's own threads, so API calls never take the UI's worker threads."""
        if self._limiter is None:  # made inside the event loop, on first use
            self._limiter = anyio.CapacityLimiter(limits.current().queue_size + 1)
        return self._limiter

    def enter(self) -> None:
        size = limits.current().queue_size
        with self._lock:
            if self.active >= size:
                raise ApiError(
                    429,
                    f"the server is busy: {self.active} API requests are already using the model "
                    f"(the limit is {size}; {limits.hint('queue_size')}); retry in a few seconds",
                    headers={"Retry-After": "5"},
                )
            self.active += 1

    def leave(self) -> None:
        with self._lock:
            self.active -= 1

    @contextmanager
    def slot(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()

    async def run(self, function: Callable[[], T]) -> T:
        """``function()`` in a worker thread, holding a slot; the caller awaits without blocking the loop."""
        with self.slot():
            return await anyio.to_thread.run_sync(function, limiter=self.limiter)

    async def run_while_connected(self, function: Callable[[threading.Event], T], request: Request) -> T:
        """``function(stop)`` in a worker thread; ``stop`` is set if the client hangs up meanwhile,
        so the batcher drops the rows of an answer no one will read."""
        stop = threading.Event()
        result: list[T] = []
        failure: list[Exception] = []  # raised after the task group, so it is not wrapped in a group

        async def watch() -> None:
            while not await request.is_disconnected():
                await anyio.sleep(DISCONNECT_POLL_S)
            stop.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(watch)
            try:
                result.append(await self.run(lambda: function(stop)))
            except Exception as error:
                failure.append(error)
            tasks.cancel_scope.cancel()
        if failure:
            raise failure[0]
        return result[0]

    async def stream(self, items: Iterator[T], stop: threading.Event) -> AsyncIterator[T]:
        """Yield ``items`` (a blocking iterator) one by one from worker threads.

        Holds a slot until the stream ends. When the client goes away (the response task is
        cancelled) ``stop`` is set and the iterator closed, so the batcher drops only these rows.
        """
        self.enter()
        try:
            while True:
                item = await anyio.to_thread.run_sync(next, items, _END, limiter=self.limiter)
                if item is _END:
                    return
                yield item  # type: ignore[misc]
        finally:
            stop.set()
            close = getattr(items, "close", None)
            if close is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(close, limiter=self.limiter)
            self.leave()
