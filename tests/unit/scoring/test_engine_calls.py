"""flip_reward/scoring/methods/engine_calls.gather: a dead engine fails the whole request, any other
error stays its item's, alike for one call (awaited in the caller's task) and for many."""

import asyncio

import pytest

from flip_reward.engines.base import EngineUnavailable
from flip_reward.scoring.methods.engine_calls import gather


async def _ok(x: int) -> int:
    await asyncio.sleep(0)
    return x


async def _fail(exc: Exception) -> int:
    await asyncio.sleep(0)
    raise exc


@pytest.mark.parametrize("others", [0, 2], ids=["one call", "three calls"])
async def test_an_item_error_stays_its_own(others):
    error = ValueError("bad output")
    outputs = await gather([_fail(error)] + [_ok(i) for i in range(others)])
    assert outputs == [error, *range(others)]


@pytest.mark.parametrize("others", [0, 2], ids=["one call", "three calls"])
async def test_a_dead_engine_fails_the_whole_request(others):
    with pytest.raises(EngineUnavailable):
        await gather([_fail(EngineUnavailable("engine died"))] + [_ok(i) for i in range(others)])


async def test_one_call_runs_in_the_callers_task():
    async def where() -> asyncio.Task | None:
        return asyncio.current_task()

    assert await gather([where()]) == [asyncio.current_task()]
