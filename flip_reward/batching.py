"""Turning many small concurrent calls into few large ones, and bounding how much work waits.

- MicroBatcher: callers submit a few items each; one worker gathers what arrives within a short
  window (or until a batch is full) and runs one call for all of it. Used for embeddings, so
  that 64 concurrent single /reward requests are encoded in one model call, not 64.
- SameRound: small CPU jobs submitted during one round of the event loop run back to back right
  after it, so that the data they share stays in the CPU's caches.
- Admission: a counter of items accepted and not yet finished; past the bound, or when the work
  queued (the new items included) cannot finish before the new request's deadline or would push
  a request in flight past its own, new work is refused at once (the routes turn that into 429)
  instead of queueing into a timeout. Admitted work starts only while it can finish at the measured
  rate; waiting work is checked again as the rate changes and shed (429) before it starts when it
  no longer can.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
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


class SameRound(Generic[R]):
    """`await same_round.run(job)` is `job()`, run in the event loop's thread together with every
    job submitted in the same round of the loop, back to back, in order, at the start of the next
    round.

    For the Scorer's small CPU jobs (copy guard, prompt building, tokenization): 64 concurrent single
    requests each ran its own between its HTTP work and the other requests', and the tokenizer's and
    the guards' data left the CPU's caches in between (callgrind: 3% more instructions per item than
    a batch, 13-17% more time). Run back to back, 64 concurrent singles took 5% less front CPU per
    item, 0.90x of a batch's rewards/s instead of 0.84x (docs/results/benchmarks.md, 2026-12-05).
    The loop's other work waits no longer than before: a round already runs every callback that is
    due in it before it polls for I/O. A job whose caller has gone is skipped."""

    def __init__(self) -> None:
        self._jobs: list[tuple[Callable[[], R], asyncio.Future[R]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, job: Callable[[], R]) -> asyncio.Future[R]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests run several): jobs left on a closed one are void
            self._jobs, self._loop = [], loop
        future: asyncio.Future[R] = loop.create_future()
        self._jobs.append((job, future))
        if len(self._jobs) == 1:
            loop.call_soon(self._run_all)
        return future

    def _run_all(self) -> None:
        jobs, self._jobs = self._jobs, []
        for job, future in jobs:
            if future.done():  # its caller was cancelled
                continue
            try:
                future.set_result(job())
            except Exception as exc:  # that caller's error, not the others'
                future.set_exception(exc)


class QueueFull(Exception):
    def __init__(
        self, requested: int, queued: int, limit: int, reason: str | None = None, retry_after_s: int = 1
    ) -> None:
        super().__init__(reason or f"{queued} items are queued, the limit is {limit}; {requested} more do not fit")
        self.requested, self.queued, self.limit = requested, queued, limit
        self.retry_after_s = retry_after_s


class Shed(QueueFull):
    """Admitted work that was waiting for its turn and, at the rate measured since, can no longer
    finish within its deadline: refused before it starts (429 with Retry-After, not a 504 later)."""


@dataclass(eq=False)
class Ticket:
    """One admitted request: its items, when its deadline ends (clock time; None: no deadline) and,
    once it waits for its turn, the future that start() resolves."""

    n: int
    end: float | None
    clock: Callable[[], float]
    started: bool = False
    turn: asyncio.Future | None = None

    def time_left(self) -> float | None:
        return None if self.end is None else self.end - self.clock()


class Admitted:
    """Admission.admit's context: a class, not a generator-based contextmanager, since every
    request enters one (a generator and its frame per request showed in the singles' profile)."""

    __slots__ = ("_admission", "_deadline_s", "_n", "_ticket")

    def __init__(self, admission: Admission, n: int, deadline_s: float | None) -> None:
        self._admission, self._n, self._deadline_s = admission, n, deadline_s
        self._ticket: Ticket | None = None

    def __enter__(self) -> Ticket:
        self._ticket = self._admission._enter(self._n, self._deadline_s)
        return self._ticket

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # The items count until the block ends, however it ends; only a result counts as finished.
        assert self._ticket is not None
        self._admission._leave(self._ticket, finished=exc_type is None)


class Admission:
    """Counts items accepted and not yet finished, and lets them start only while they can finish.

    At arrival, `with admission.admit(n, deadline_s) as ticket:` raises QueueFull when the n items
    would take the count past `limit`, or when, at the rate the server has been finishing items,
    admitting them would make some request miss its deadline: the new one, or one already admitted
    that could still make its own. The engine shares its steps among all the work in flight
    (continuous batching), so new work delays the work already there; the time to finish everything
    queued, new items included, is the bound every request's remaining time is checked against (a
    429 now is better than a 504 later). The items count until the block ends (however it ends:
    result, error, timeout or cancellation).

    Then `await admission.start(ticket)` hands the work to the engine only while what is started,
    its own items included, takes at most START_MARGIN of its remaining time at the measured rate
    (so it still finishes if the machine slows down by that much afterwards); until then it waits,
    in arrival order. The rate is measured again while work waits (every RECHECK_S and whenever
    work finishes), and a waiting request that can no longer finish within its deadline is shed
    with Shed (a 429) before it starts. Work that started and still misses its deadline is the
    caller's 504. Without a measured rate (a cold start), work starts at once."""

    # Service rate: items finished per second of busy time (time with work queued), decayed so
    # that it follows the last half-minute of work; idle time neither counts nor decays it.
    HALF_LIFE_S = 30.0
    # Started work may take this share of a request's remaining time at the measured rate: it still
    # finishes if the machine then slows down by up to 4x. Half was not enough: one busy loop beside
    # vLLM-CPU on 2 cores slowed it 2.2x and 9 of 90 started singles missed (bench/throughput.py
    # --burst-only --cpu-hog); a GPU engine at 100 items/s still gets 3,000 items at once.
    START_MARGIN = 0.25
    RECHECK_S = 0.25

    def __init__(
        self, limit: int, on_change: Callable[[int], None] | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.queued = 0  # admitted and not finished: waiting or started
        self.started = 0  # items handed to the engine
        self._on_change = on_change
        self._clock = clock
        self._last_change = clock()
        self._busy_s = 0.0
        self._done = 0.0
        self._progress_at = self._last_change  # the last finish, or the engine's start from idle
        self._ends: list[float] = []  # the deadlines of the admitted requests that have one, sorted
        self._waiting: deque[Ticket] = deque()
        self._rechecker: asyncio.Task | None = None

    @property
    def waiting(self) -> int:
        """Requests admitted and waiting for their turn to start."""
        return len(self._waiting)

    def rate(self) -> float | None:
        """Items finished per busy second lately; None until there is enough to go on."""
        if self._done < 4 or self._busy_s < 1.0:
            return None
        return self._done / self._busy_s

    def _rate_at(self, now: float) -> float | None:
        """The rate to plan with: the measured one, or less once the work started is overdue at it
        (nothing has finished for longer than the started items should take): a slowdown then
        shows before anything finishes. Not sooner, since a batch finishes all at once."""
        rate = self.rate()
        quiet = now - self._progress_at
        if rate is not None and self.started and quiet > self.started / rate:
            return self.started / quiet
        return rate

    def _refusal(self, n: int, deadline_s: float | None) -> QueueFull | None:
        if self.queued + n > self.limit:
            return QueueFull(n, self.queued, self.limit)
        now = self._clock()
        rate = self._rate_at(now)
        if rate is None:
            return None
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
        # Requests in flight that can still finish in time must not be pushed past their deadline:
        # the first deadline at or past the work queued now, if it comes before the new work ends.
        first = bisect.bisect_left(self._ends, now + before)
        if first < len(self._ends) and self._ends[first] < now + after:
            return QueueFull(
                n,
                self.queued,
                self.limit,
                f"{n} more items would push a request in flight past its deadline "
                f"({after:.0f} s of work queued at {rate:.2f} items/s, {self._ends[first] - now:.0f} s left)",
                retry_after_s=max(1, min(60, math.ceil(min(n / rate, 60)))),
            )
        return None

    def admit(self, n: int, deadline_s: float | None = None) -> Admitted:
        """`with admission.admit(n, deadline_s) as ticket:` the refusal (QueueFull) or the ticket."""
        return Admitted(self, n, deadline_s)

    def _enter(self, n: int, deadline_s: float | None) -> Ticket:
        refusal = self._refusal(n, deadline_s)
        if refusal is not None:
            raise refusal
        ticket = Ticket(n, None if deadline_s is None else self._clock() + deadline_s, self._clock)
        if ticket.end is not None:
            bisect.insort(self._ends, ticket.end)
        self._set(self.queued + n)
        return ticket

    def _leave(self, ticket: Ticket, finished: bool) -> None:
        if ticket.end is not None:
            del self._ends[bisect.bisect_left(self._ends, ticket.end)]
        if ticket.turn is not None and ticket in self._waiting:
            self._waiting.remove(ticket)
        if ticket.started:
            self.started -= ticket.n
        self._set(self.queued - ticket.n, finished=ticket.n if finished else 0)
        self.recheck()  # room freed, and a new rate: waiting work may start, or be shed

    async def start(self, ticket: Ticket) -> None:
        """Returns when the ticket's work may go to the engine; raises Shed when it cannot finish."""
        now = self._clock()
        if not self._waiting and self._may_start(ticket, now, self._rate_at(now)):
            self._start(ticket)
            return
        ticket.turn = asyncio.get_running_loop().create_future()
        self._waiting.append(ticket)
        if self._rechecker is None or self._rechecker.done():
            self._rechecker = asyncio.create_task(self._recheck_while_waiting(), name="admission-recheck")
        self.recheck()
        await ticket.turn

    def recheck(self) -> None:
        """Shed the waiting work that cannot finish in time at the rate measured now, then start
        what may start, in arrival order."""
        now = self._clock()
        rate = self._rate_at(now)
        ahead = self.started
        kept: deque[Ticket] = deque()
        for ticket in self._waiting:
            assert ticket.turn is not None
            if ticket.turn.done():  # its caller gave up
                continue
            left = ticket.time_left()
            need = None if rate is None else (ahead + ticket.n) / rate
            if left is not None and (left <= 0 or (need is not None and need > left)):
                reason = (
                    f"its deadline passed while {ahead} items were ahead of it"
                    if need is None
                    else f"at {rate:.2f} items/s, the {ahead} items ahead of it and its own take about "
                    f"{need:.0f} s, {left:.0f} s were left of its deadline"
                )
                wait_s = ahead / rate if rate else self.RECHECK_S
                ticket.turn.set_exception(
                    Shed(
                        ticket.n,
                        self.queued,
                        self.limit,
                        f"shed before it started: {reason}",
                        retry_after_s=max(1, min(60, math.ceil(wait_s))),
                    )
                )
                continue
            kept.append(ticket)
            ahead += ticket.n
        self._waiting = kept
        while self._waiting and self._may_start(self._waiting[0], now, rate):
            ticket = self._waiting.popleft()
            self._start(ticket)
            assert ticket.turn is not None
            ticket.turn.set_result(None)

    def _may_start(self, ticket: Ticket, now: float, rate: float | None) -> bool:
        if self.started == 0 or rate is None or ticket.end is None:
            return True  # an idle engine takes anything; without a rate or a deadline there is no basis to wait
        return (self.started + ticket.n) / rate <= self.START_MARGIN * (ticket.end - now)

    def _start(self, ticket: Ticket) -> None:
        if self.started == 0:
            self._progress_at = self._clock()  # the engine was idle: nothing was overdue
        ticket.started = True
        self.started += ticket.n

    async def _recheck_while_waiting(self) -> None:
        while self._waiting:
            await asyncio.sleep(self.RECHECK_S)
            self.recheck()

    def _set(self, value: int, finished: int = 0) -> None:
        now = self._clock()
        if self.queued > 0:  # busy since the last change
            elapsed = now - self._last_change
            decay = 0.5 ** (elapsed / self.HALF_LIFE_S)
            self._busy_s = self._busy_s * decay + elapsed
            self._done *= decay
        self._done += finished
        if finished:
            self._progress_at = now
        self._last_change = now
        self.queued = value
        if self._on_change is not None:
            self._on_change(value)
