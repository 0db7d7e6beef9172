"""Shares the model between concurrent users by batching their requests together.

Requests that arrive while the model is busy, or within ``window_s`` of each other, run as one
batch: the engine steers each row with its own delta and each row samples from its own seeded
generator, so every user gets exactly what they would have got alone, sooner. Each caller reads
its own rows step by step; closing its stream early (a Stop button) drops only its rows.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from transformers import PreTrainedTokenizerBase

from app.steering.engine import SteeringEngine
from app.steering.generation import GenerationRequest, GenerationResult, StopSignal, stream_generate, validate_batch

_DONE = object()


@dataclass
class _Ticket:
    requests: Sequence[GenerationRequest]
    stop: StopSignal | None
    release_claim: Callable[[], None]  # the caller's claim on the model lock, until its batch starts
    out: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def over(self) -> bool:
        return self.cancelled.is_set() or (self.stop is not None and self.stop.is_set())


class _AllOver:
    """Stops the shared batch once every caller in it has stopped or gone away."""

    def __init__(self, tickets: list[_Ticket]) -> None:
        self.tickets = tickets

    def is_set(self) -> bool:
        return all(ticket.over for ticket in self.tickets)


class GenerationBatcher:
    """Runs generation requests from many threads in shared batches on one engine."""

    def __init__(
        self,
        engine: SteeringEngine,
        tokenizer: PreTrainedTokenizerBase,
        *,
        is_chat: bool,
        max_rows: int = 16,
        window_s: float = 0.01,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.is_chat = is_chat
        self.max_rows = max_rows
        self.window_s = window_s
        self._pending: queue.Queue[_Ticket] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches_run = 0  # for tests and the benchmark: how many shared batches ran

    def stream(
        self, requests: Sequence[GenerationRequest], stop: StopSignal | None = None
    ) -> Iterator[list[GenerationResult]]:
        """Yield this caller's rows after every step, like :func:`stream_generate`."""
        if not requests:
            return
        if len(requests) > self.max_rows:
            raise ValueError(f"at most {self.max_rows} rows per request, got {len(requests)}")
        validate_batch(self.engine, requests, self.tokenizer, is_chat=self.is_chat)  # limits, prompt tokens
        # From now until its batch holds the model lock, this request is pending foreground work:
        # a background build does not start another forward pass meanwhile.
        ticket = _Ticket(list(requests), stop, self.engine.lock.claim())
        self._ensure_worker()
        self._pending.put(ticket)
        try:
            while True:
                item = ticket.out.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            ticket.cancelled.set()
            ticket.release_claim()

    def _ensure_worker(self) -> None:
        with self._start_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="generation-batcher", daemon=True)
                self._worker.start()

    def _collect(self) -> list[_Ticket]:
        tickets = [self._pending.get()]
        rows = len(tickets[0].requests)
        while rows < self.max_rows:
            try:
                ticket = self._pending.get(timeout=self.window_s)
            except queue.Empty:
                break
            if rows + len(ticket.requests) > self.max_rows:
                self._pending.put(ticket)  # next batch
                break
            tickets.append(ticket)
            rows += len(ticket.requests)
        for ticket in tickets:
            if ticket.over:  # stopped or gone before its batch started: it ends here
                ticket.release_claim()
                ticket.out.put(_DONE)
        return [t for t in tickets if not t.over]

    def _run(self) -> None:
        while True:
            tickets = self._collect()
            if not tickets:
                continue
            self.batches_run += 1
            self._run_batch(tickets)

    def _run_batch(self, tickets: list[_Ticket]) -> None:
        rows = [request for ticket in tickets for request in ticket.requests]
        spans, start = [], 0
        for ticket in tickets:
            spans.append((start, start + len(ticket.requests)))
            start += len(ticket.requests)
        open_tickets = set(range(len(tickets)))
        try:
            with self.engine.lock:  # the batch holds the model now: its callers' claims are done
                for ticket in tickets:
                    ticket.release_claim()
                self._deliver(tickets, spans, open_tickets, rows)
        except BaseException as error:  # hand the error to every caller; the worker lives on
            for index in open_tickets:
                tickets[index].out.put(error)
            open_tickets.clear()
        for index in open_tickets:
            tickets[index].out.put(_DONE)

    def _deliver(
        self,
        tickets: list[_Ticket],
        spans: list[tuple[int, int]],
        open_tickets: set[int],
        rows: list[GenerationRequest],
    ) -> None:
        """Generate the batch and hand each caller its rows after every step."""
        for results in stream_generate(self.engine, self.tokenizer, rows, is_chat=self.is_chat, stop=_AllOver(tickets)):
            for index in list(open_tickets):
                ticket, (lo, hi) = tickets[index], spans[index]
                mine = [_snapshot(result) for result in results[lo:hi]]
                if ticket.over:
                    for result in mine:
                        result.finish_reason = result.finish_reason or "stopped"
                    ticket.out.put(mine)
                    ticket.out.put(_DONE)
                    open_tickets.discard(index)
                    continue
                ticket.out.put(mine)
                if all(result.finish_reason for result in mine):
                    ticket.out.put(_DONE)
                    open_tickets.discard(index)


def _snapshot(result: GenerationResult) -> GenerationResult:
    """A copy the caller may keep while the batch goes on changing the original."""
    return replace(result, token_ids=list(result.token_ids), top_k=list(result.top_k))
