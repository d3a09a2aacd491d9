"""MicroBatcher and Admission (app/batching.py): pure asyncio logic."""

import asyncio

import pytest

from app.batching import Admission, MicroBatcher, QueueFull


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.fail = fail

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await asyncio.sleep(0.01)
        if self.fail:
            raise ValueError("boom")
        return [x * 10 for x in items]


async def test_concurrent_submissions_share_one_call():
    run = Recorder()
    batcher = MicroBatcher(run, max_batch_size=64, max_wait_s=0.05)
    results = await asyncio.gather(*(batcher.submit([i]) for i in range(20)))
    assert results == [[i * 10] for i in range(20)]
    assert len(run.batches) == 1 and sorted(run.batches[0]) == list(range(20))
    await batcher.close()


async def test_batches_are_capped_and_results_go_to_the_right_caller():
    run = Recorder()
    sizes = []
    batcher = MicroBatcher(run, max_batch_size=8, max_wait_s=0.05, on_batch=sizes.append)
    results = await asyncio.gather(*(batcher.submit([i, i + 100]) for i in range(10)))
    assert results == [[i * 10, (i + 100) * 10] for i in range(10)]
    assert max(sizes) <= 8 and sum(sizes) == 20
    await batcher.close()


async def test_a_submission_larger_than_the_cap_goes_alone():
    run = Recorder()
    batcher = MicroBatcher(run, max_batch_size=4, max_wait_s=0.0)
    assert await batcher.submit(list(range(10))) == [x * 10 for x in range(10)]
    await batcher.close()


async def test_an_error_reaches_every_caller_of_that_batch_and_the_batcher_goes_on():
    run = Recorder(fail=True)
    batcher = MicroBatcher(run, max_batch_size=64, max_wait_s=0.02)
    results = await asyncio.gather(batcher.submit([1]), batcher.submit([2]), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    run.fail = False
    assert await batcher.submit([3]) == [30]
    await batcher.close()


async def test_a_cancelled_caller_does_not_disturb_the_others():
    run = Recorder()
    batcher = MicroBatcher(run, max_batch_size=64, max_wait_s=0.05)
    doomed = asyncio.create_task(batcher.submit([1]))
    kept = asyncio.create_task(batcher.submit([2]))
    await asyncio.sleep(0)
    doomed.cancel()
    assert await kept == [20]
    await batcher.close()


def test_admission_bounds_and_releases_on_any_exit():
    depths = []
    admission = Admission(limit=10, on_change=depths.append)
    with admission.admit(6):
        with pytest.raises(QueueFull):
            with admission.admit(5):
                pass
        with admission.admit(4):
            assert admission.queued == 10
    with pytest.raises(RuntimeError):
        with admission.admit(10):
            raise RuntimeError("scoring failed")
    assert admission.queued == 0
    assert depths == [6, 10, 6, 0, 10, 0]


def test_admission_refuses_work_that_would_only_time_out():
    now = [0.0]
    admission = Admission(limit=1000, clock=lambda: now[0])
    assert admission.rate() is None
    # 10 items finish after 5 busy seconds: 2 items/s
    with admission.admit(10, deadline_s=30):
        now[0] += 5.0
    assert admission.rate() == pytest.approx(2.0, rel=0.05)
    now[0] += 100.0  # idle time neither counts nor decays the rate
    assert admission.rate() == pytest.approx(2.0, rel=0.05)
    with admission.admit(50, deadline_s=30):  # nothing ahead: admitted whatever the deadline
        # 50 ahead take ~25 s at 2/s: fits a 30 s deadline, not a 10 s one
        with admission.admit(1, deadline_s=30):
            pass
        with pytest.raises(QueueFull, match="past this request's deadline of 10 s") as refused:
            with admission.admit(1, deadline_s=10):
                pass
        assert 10 <= refused.value.retry_after_s <= 16  # ~25 s of work ahead, 10 s deadline
        now[0] += 1.0
    assert admission.queued == 0
