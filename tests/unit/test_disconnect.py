"""flip_reward/api/disconnect.py: the work runs in the caller's task and, once it has run for
`watch_after_s`, a watcher cancels it when the client goes; any other cancellation (a deadline, a
shutdown) stays what it is."""

import asyncio

import pytest

from flip_reward import metrics
from flip_reward.api.disconnect import ClientDisconnected, cancel_on_disconnect


class FakeRequest:
    """Only receive(): the next ASGI message, http.disconnect once `gone` is set."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def receive(self) -> dict:
        await self.gone.wait()
        return {"type": "http.disconnect"}


def test_the_result_comes_back_and_the_watcher_ends():
    async def run():
        request = FakeRequest()
        result = await cancel_on_disconnect(request, asyncio.sleep(0.05, "done"), watch_after_s=0)
        await asyncio.sleep(0)
        watchers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return result, watchers

    result, watchers = asyncio.run(run())
    assert result == "done" and watchers == []


def test_short_work_gets_no_watcher_task():
    tasks = []

    async def work():
        tasks.extend(t for t in asyncio.all_tasks() if t is not asyncio.current_task())
        await asyncio.sleep(0.01)
        tasks.extend(t for t in asyncio.all_tasks() if t is not asyncio.current_task())
        return "done"

    async def run():
        return await cancel_on_disconnect(FakeRequest(), work(), watch_after_s=10)

    assert asyncio.run(run()) == "done" and tasks == []


def test_a_disconnect_before_the_watch_starts_is_seen_when_it_does():
    async def run():
        request = FakeRequest()
        request.gone.set()  # gone at once; the watcher starts 0.05 s later
        started = asyncio.get_running_loop().time()
        with pytest.raises(ClientDisconnected):
            await cancel_on_disconnect(request, asyncio.sleep(60), watch_after_s=0.05)
        return asyncio.get_running_loop().time() - started

    assert 0.04 <= asyncio.run(run()) < 30  # not before the watch starts (timers may fire a hair early)


def test_a_disconnect_cancels_the_work_and_waits_for_it():
    cleaned = []

    async def work():
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0)  # its engine requests are aborted before the caller goes on
            cleaned.append(True)

    async def run():
        request = FakeRequest()
        asyncio.get_running_loop().call_later(0.01, request.gone.set)
        await cancel_on_disconnect(request, work(), watch_after_s=0)

    before = metrics.ABORTS._value.get()
    with pytest.raises(ClientDisconnected):
        asyncio.run(run())
    assert cleaned == [True] and metrics.ABORTS._value.get() == before + 1


def test_a_deadline_is_not_taken_for_a_disconnect():
    async def run():
        async with asyncio.timeout(0.01):
            await cancel_on_disconnect(FakeRequest(), asyncio.sleep(60), watch_after_s=0)

    with pytest.raises(TimeoutError):
        asyncio.run(run())


def test_a_disconnect_after_an_outside_cancel_stays_a_cancel():
    async def run():
        request = FakeRequest()
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, task.cancel)  # e.g. the server shutting down
        loop.call_later(0.01, request.gone.set)
        await cancel_on_disconnect(request, asyncio.sleep(60), watch_after_s=0)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(run())
