"""Stop working for a client that has gone: when the HTTP connection closes while a handler
runs, the scoring task is cancelled, which aborts its requests in the vLLM engine.

Same pattern as vLLM's own entrypoints (`with_cancellation`): the request body has already been
read, so the only message left to receive is `http.disconnect`; wait for it beside the work and
cancel the work when it comes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from flip_reward import metrics

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection before its answer was ready."""


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


# Work that ends sooner is not watched: a watcher task costs a single request about 10 us of the
# front's CPU (a tenth of what its HTTP costs, bench/front_floor.py), and a client that leaves such
# work wastes at most this much engine time. Longer work is cancelled this long after a disconnect.
WATCH_AFTER_S = 0.5


async def cancel_on_disconnect(request: Request, work: Awaitable[T], watch_after_s: float = WATCH_AFTER_S) -> T:
    """The result of `work`; if the client disconnects first, `work` is cancelled (and awaited,
    so its engine requests are aborted before this returns) and ClientDisconnected is raised.

    `work` runs in the caller's task. From `watch_after_s` on, one watcher task waits for the
    disconnect and cancels that task, the way asyncio.timeout does; a second task for the work and
    asyncio.wait cost a single request more than the rest of this module (bench/front_ceiling.py's
    profile)."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    disconnected = False
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        nonlocal disconnected
        await _disconnected(request)
        disconnected = True
        task.cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    timer = loop.call_later(watch_after_s, start_watching)
    try:
        return await work
    except asyncio.CancelledError:
        # Ours only when the watcher cancelled and nobody else did too (uncancel counts them).
        if disconnected and task.uncancel() == 0:
            metrics.ABORTS.inc()
            raise ClientDisconnected("the client disconnected") from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
