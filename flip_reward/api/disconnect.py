"""Stop working for a client that has gone: when the HTTP connection closes while a handler
runs, the scoring task is cancelled, which aborts its requests in the vLLM engine.

Same pattern as vLLM's own entrypoints (`with_cancellation`): the request body has already been
read, so the only message left to receive is `http.disconnect`; wait for it next to the work and
cancel whichever is still running when the other ends.
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


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """The result of `work`; if the client disconnects first, `work` is cancelled (and awaited,
    so its engine requests are aborted before this returns) and ClientDisconnected is raised."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
    if task.cancelled():
        metrics.ABORTS.inc()
        raise ClientDisconnected("the client disconnected")
    return task.result()
