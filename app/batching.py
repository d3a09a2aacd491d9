"""Turning many small concurrent calls into few large ones, and bounding how much work waits.

- MicroBatcher: callers submit a few items each; one worker gathers what arrives within a short
  window (or until a batch is full) and runs one call for all of it. Used for embeddings, so
  that 64 concurrent single /reward requests are encoded in one model call, not 64.
- Admission: a counter of items accepted and not yet finished; past the bound, or when the work
  queued (the new items included) cannot finish before the new request's deadline or would push
  a request in flight past its own, new work is refused at once (the routes turn that into 429)
  instead of queueing into a timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Submission(Generic[T, R]):
    items: Sequence[T]
    future: asyncio.Future


class MicroBatcher(Generic[T, R]):
    """`await batcher.submit(items)` returns `run(items)`'s results for those items, but `run` is
    called on the concatenation of everything submitted within `max_wait_s` of the first waiting
    submission (up to `max_batch_size` items; a single larger submission goes alone).

    `run` is called by one worker task, one batch at a time: while a batch runs, new submissions
    pile up and form the next one, so batches grow with the load by themselves.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[Sequence[R]]],
        max_batch_size: int,
        max_wait_s: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Submission[T, R]] | None = None
        self._worker: asyncio.Task | None = None
        self._held: _Submission[T, R] | None = None  # drawn from the queue but did not fit the last batch

    async def submit(self, items: Sequence[T]) -> list[R]:
        if not items:
            return []
        if self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()  # a new worker (and queue) on this event loop
            self._held = None
            self._worker = asyncio.create_task(self._work(self._queue), name="micro-batcher")
        assert self._queue is not None
        submission: _Submission[T, R] = _Submission(items, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(submission)
        return await submission.future

    async def _next_batch(self, queue: asyncio.Queue[_Submission[T, R]]) -> list[_Submission[T, R]]:
        first = self._held or await queue.get()
        self._held = None
        batch, size = [first], len(first.items)
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while size < self.max_batch_size:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                nxt = queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(queue.get(), remaining)
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if size + len(nxt.items) > self.max_batch_size:
                self._held = nxt
                break
            batch.append(nxt)
            size += len(nxt.items)
        return batch

    async def _work(self, queue: asyncio.Queue[_Submission[T, R]]) -> None:
        while True:
            batch = [s for s in await self._next_batch(queue) if not s.future.done()]  # drop cancelled callers
            if not batch:
                continue
            items = [item for s in batch for item in s.items]
            if self._on_batch is not None:
                self._on_batch(len(items))
            try:
                results = list(await self._run(items))
                if len(results) != len(items):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
            except Exception as exc:  # every caller of this batch gets the error
                for s in batch:
                    if not s.future.done():
                        s.future.set_exception(exc)
                continue
            start = 0
            for s in batch:
                if not s.future.done():
                    s.future.set_result(results[start : start + len(s.items)])
                start += len(s.items)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, Exception):
                pass
            self._worker = None


class QueueFull(Exception):
    def __init__(
        self, requested: int, queued: int, limit: int, reason: str | None = None, retry_after_s: int = 1
    ) -> None:
        super().__init__(reason or f"{queued} items are queued, the limit is {limit}; {requested} more do not fit")
        self.requested, self.queued, self.limit = requested, queued, limit
        self.retry_after_s = retry_after_s


class Admission:
    """Counts items accepted and not yet finished. `with admission.admit(n, deadline_s):` raises
    QueueFull when the n items would take the count past `limit`, or when, at the rate the server
    has been finishing items, admitting them would make some request miss its deadline: the new one,
    or one already admitted that could still make its own. The engine shares its steps among all
    the work in flight (continuous batching), so new work delays the work already there; the time
    to finish everything queued, new items included, is the bound every request's remaining time
    is checked against (a 429 now is better than a 504 later). Otherwise the items count until the
    block ends (however it ends: result, error, timeout or cancellation)."""

    # Service rate: items finished per second of busy time (time with work queued), decayed so
    # that it follows the last minutes of work; idle time neither counts nor decays it.
    HALF_LIFE_S = 60.0

    def __init__(
        self, limit: int, on_change: Callable[[int], None] | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.queued = 0
        self._on_change = on_change
        self._clock = clock
        self._last_change = clock()
        self._busy_s = 0.0
        self._done = 0.0
        self._deadlines: dict[int, float] = {}  # admitted request -> when its deadline ends (clock time)
        self._tickets = itertools.count()

    def rate(self) -> float | None:
        """Items finished per busy second lately; None until there is enough to go on."""
        if self._done < 4 or self._busy_s < 1.0:
            return None
        return self._done / self._busy_s

    def _refusal(self, n: int, deadline_s: float | None) -> QueueFull | None:
        if self.queued + n > self.limit:
            return QueueFull(n, self.queued, self.limit)
        rate = self.rate()
        if rate is None:
            return None
        now = self._clock()
        before, after = self.queued / rate, (self.queued + n) / rate
        if self.queued == 0:  # nothing ahead: waiting cannot make it faster (a batch too big is a 413 upstream)
            return None
        if deadline_s is not None and after > deadline_s:
            return QueueFull(
                n,
                self.queued,
                self.limit,
                f"the {self.queued + n} items queued with these take about {after:.0f} s at "
                f"{rate:.2f} items/s, past this request's deadline of {deadline_s:g} s",
                retry_after_s=max(1, min(60, math.ceil(after - deadline_s))),
            )
        # Requests in flight that can still finish in time must not be pushed past their deadline.
        at_risk = [left for left in (end - now for end in self._deadlines.values()) if before <= left < after]
        if at_risk:
            return QueueFull(
                n,
                self.queued,
                self.limit,
                f"{n} more items would push a request in flight past its deadline "
                f"({after:.0f} s of work queued at {rate:.2f} items/s, {min(at_risk):.0f} s left)",
                retry_after_s=max(1, min(60, math.ceil(min(n / rate, 60)))),
            )
        return None

    @contextmanager
    def admit(self, n: int, deadline_s: float | None = None) -> Iterator[None]:
        refusal = self._refusal(n, deadline_s)
        if refusal is not None:
            raise refusal
        ticket = next(self._tickets)
        if deadline_s is not None:
            self._deadlines[ticket] = self._clock() + deadline_s
        self._set(self.queued + n)
        finished = False
        try:
            yield
            finished = True
        finally:
            self._deadlines.pop(ticket, None)
            self._set(self.queued - n, finished=n if finished else 0)

    def _set(self, value: int, finished: int = 0) -> None:
        now = self._clock()
        if self.queued > 0:  # busy since the last change
            elapsed = now - self._last_change
            decay = 0.5 ** (elapsed / self.HALF_LIFE_S)
            self._busy_s = self._busy_s * decay + elapsed
            self._done *= decay
        self._done += finished
        self._last_change = now
        self.queued = value
        if self._on_change is not None:
            self._on_change(value)
