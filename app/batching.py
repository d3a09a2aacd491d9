"""Turning many small concurrent calls into few large ones, and bounding how much work waits.

- MicroBatcher: callers submit a few items each; one worker gathers what arrives within a short
  window (or until a batch is full) and runs one call for all of it. Used for embeddings, so
  that 64 concurrent single /reward requests are encoded in one model call, not 64.
- Admission: a counter of items accepted and not yet finished; past the bound, new work is
  refused at once (the routes turn that into 429) instead of queueing without limit.
"""

from __future__ import annotations

import asyncio
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
            self._queue = asyncio.Queue()
            self._held = None
            self._worker = asyncio.create_task(self._work(), name="micro-batcher")
        submission = _Submission(items, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(submission)
        return await submission.future

    async def _next_batch(self) -> list[_Submission[T, R]]:
        first = self._held or await self._queue.get()
        self._held = None
        batch, size = [first], len(first.items)
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while size < self.max_batch_size:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                nxt = self._queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self._queue.get(), remaining)
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if size + len(nxt.items) > self.max_batch_size:
                self._held = nxt
                break
            batch.append(nxt)
            size += len(nxt.items)
        return batch

    async def _work(self) -> None:
        while True:
            batch = [s for s in await self._next_batch() if not s.future.done()]  # drop cancelled callers
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
    def __init__(self, requested: int, queued: int, limit: int) -> None:
        super().__init__(f"{queued} items are queued, the limit is {limit}; {requested} more do not fit")
        self.requested, self.queued, self.limit = requested, queued, limit


class Admission:
    """Counts items accepted and not yet finished. `with admission.admit(n):` raises QueueFull
    when the n items would take the count past `limit`; otherwise they count until the block ends
    (however it ends: result, error, timeout or cancellation)."""

    def __init__(self, limit: int, on_change: Callable[[int], None] | None = None) -> None:
        self.limit = limit
        self.queued = 0
        self._on_change = on_change

    @contextmanager
    def admit(self, n: int) -> Iterator[None]:
        if self.queued + n > self.limit:
            raise QueueFull(n, self.queued, self.limit)
        self._set(self.queued + n)
        try:
            yield
        finally:
            self._set(self.queued - n)

    def _set(self, value: int) -> None:
        self.queued = value
        if self._on_change is not None:
            self._on_change(value)
