"""Engine watchdog: notices an engine that has died or stopped making progress, fails it (every
request in flight gets a 503 at once) and tells the service, which then exits the process.

Two checks, every `interval_s`:
- dead: the engine reports itself no longer alive (vLLM: AsyncLLM.errored, set when its EngineCore
  process exits or its output loop dies; remote: never on its own, a fleet that refuses is only
  cooled down and retried);
- hung: requests are outstanding but the engine has produced no output for `stall_s` seconds
  (a live process that no longer answers, e.g. a stuck kernel or a stopped worker).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class Watched(Protocol):
    """The part of flip_reward.engines.base.Engine the watchdog reads."""

    outstanding_requests: int
    last_progress_at: float  # time.monotonic() of the last output (or of the start of a busy spell)

    def is_alive(self) -> bool: ...

    def mark_failed(self, reason: str) -> None: ...


def diagnose(engine: Watched, stall_s: float, now: float | None = None) -> str | None:
    """Why the engine should be given up on, or None while it is fine."""
    if not engine.is_alive():
        return "the engine process has died"
    now = time.monotonic() if now is None else now
    silent_for = now - engine.last_progress_at
    if engine.outstanding_requests > 0 and silent_for > stall_s:
        return (
            f"the engine is hung: no output for {silent_for:.0f} s with "
            f"{engine.outstanding_requests} requests outstanding (limit {stall_s:g} s)"
        )
    return None


async def watch(
    engine: Watched, on_failure: Callable[[str], None], interval_s: float = 1.0, stall_s: float = 120.0
) -> str:
    """Runs until the engine fails; then fails it, calls on_failure(reason) and returns the reason."""
    while True:
        await asyncio.sleep(interval_s)
        reason = diagnose(engine, stall_s)
        if reason is not None:
            engine.mark_failed(reason)
            on_failure(reason)
            return reason
