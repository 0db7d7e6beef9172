"""Torch's CPU work of a block on one OpenMP thread, for the calling thread only.

OpenMP threads that sleep between parallel regions (``OMP_WAIT_POLICY=PASSIVE``, set by
``python -m app``) take about 150 µs to wake: more than a second thread saves on small work (a
decoding step's attention, oneDNN's packed product of a narrow model's few rows;
docs/performance.md). The panel product, which has helper threads of its own, follows the same
count: inside the block it runs on the calling thread alone.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


@functools.cache
def _thread_count_setter() -> Callable[[int], None] | None:
    """``omp_set_num_threads`` of the OpenMP runtime torch runs on, or None where it cannot be reached.

    It sets the calling thread's count only. ``torch.set_num_threads`` also sets the count that every
    thread started later takes up, so a server thread started while a product ran on one thread
    would keep one thread for good."""
    try:
        setter = ctypes.CDLL(None).omp_set_num_threads
    except (OSError, AttributeError, TypeError):  # no OpenMP symbols in the process (another platform's build)
        return None
    setter.argtypes, setter.restype = [ctypes.c_int], None
    threads = torch.get_num_threads()
    setter(1)
    reached = torch.get_num_threads() == 1  # the runtime torch asks, not another library's copy
    setter(threads)
    return setter if reached else None


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch's CPU operations of this block, in the calling thread only, on one OpenMP thread.

    oneDNN's product, the panel product and sdpa give the same bits on one thread as on two, so
    batched rows still equal their one-at-a-time runs."""
    setter = _thread_count_setter()
    threads = torch.get_num_threads()
    if setter is None or threads == 1:
        yield
        return
    setter(1)
    try:
        yield
    finally:
        setter(threads)
