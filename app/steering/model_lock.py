"""The model's lock: one forward pass (or one hooked block) at a time, and users before background work.

Hooks are global to the model, so every forward pass with hooks runs under one lock
(:attr:`SteeringEngine.lock`). A ``threading.RLock`` is not fair and knows nothing of who is
waiting: the library's background build, releasing it after one forward pass and asking again at
once, could keep a user's generation waiting for a whole concept. :class:`ModelLock` is re-entrant
like ``RLock`` and adds one rule:

    a thread marked ``with lock.background():`` takes the lock only while no foreground work is
    pending, where foreground work is pending while another thread waits for the lock, or while
    someone holds a claim (:meth:`claim` / ``with lock.foreground():``).

Claims cover the gaps in which a user's work is on its way but not waiting on the lock yet: a
generation request queued for the batcher, a user's build of a concept between its forward
passes. Background work takes the lock for one forward pass at a time (extraction does; a build's
every model call must), so it pauses at the next forward-pass boundary and resumes when nothing is
pending. It never holds the lock while it waits, so foreground work never waits for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class ModelLock:
    """A re-entrant lock whose background holders yield to waiting or claimed foreground work."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._foreground_waiting = 0  # foreground threads blocked in acquire
        self._claims = 0
        self._background_waiting = 0  # background threads blocked in acquire
        self._local = threading.local()
        self.background_yields = 0  # times a background acquire waited for foreground work (tests, bench)

    # --- who is asking -------------------------------------------------------------------
    def is_background(self) -> bool:
        """Whether the calling thread is inside ``with lock.background():``."""
        return bool(getattr(self._local, "background", False))

    @contextmanager
    def background(self) -> Iterator[None]:
        """Mark the calling thread as background work for the block (the library's build)."""
        previous = self.is_background()
        self._local.background = True
        try:
            yield
        finally:
            self._local.background = previous

    def claim(self) -> Callable[[], None]:
        """Count foreground work as pending until the returned function is called (once is enough;
        it may be called from another thread). A background thread's claim counts for nothing."""
        if self.is_background():
            return lambda: None
        with self._cond:
            self._claims += 1
        released = threading.Event()

        def release() -> None:
            with self._cond:
                if released.is_set():
                    return
                released.set()
                self._claims -= 1
                self._cond.notify_all()

        return release

    @contextmanager
    def foreground(self) -> Iterator[None]:
        """Hold a claim for the block: background work stays paused between its forward passes."""
        release = self.claim()
        try:
            yield
        finally:
            release()

    def pending(self) -> int:
        """Foreground threads waiting for the lock plus claims held."""
        with self._cond:
            return self._foreground_waiting + self._claims

    def should_yield(self) -> bool:
        """Whether the calling thread is background work that foreground work is waiting for: it
        should end its hold at the next step boundary (release the lock and ask again)."""
        return self.is_background() and self.pending() > 0

    def background_waiting(self) -> int:
        """Background threads blocked in :meth:`acquire` now (for tests and the health view)."""
        with self._cond:
            return self._background_waiting

    # --- the lock ------------------------------------------------------------------------
    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = threading.get_ident()
        background = self.is_background()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return True

            yielded = False

            def free() -> bool:
                nonlocal yielded
                if self._owner is not None:
                    return False
                if background and (self._foreground_waiting > 0 or self._claims > 0):
                    yielded = True
                    return False
                return True

            if background:
                self._background_waiting += 1
            else:
                self._foreground_waiting += 1
            try:
                if not blocking:
                    got = free()
                else:
                    got = self._cond.wait_for(free, timeout=None if timeout < 0 else timeout)
                self.background_yields += yielded
                if not got:
                    return False
                self._owner, self._depth = me, 1
                return True
            finally:
                if background:
                    self._background_waiting -= 1
                else:
                    self._foreground_waiting -= 1
                    self._cond.notify_all()  # a background thread may be waiting for this count to drop

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("cannot release the model lock: this thread does not hold it")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()

    def held_by_me(self) -> bool:
        with self._cond:
            return self._owner == threading.get_ident()

    def __enter__(self) -> ModelLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
