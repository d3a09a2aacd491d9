"""MicroBatcher, SameRound and Admission (flip_reward/batching.py): pure asyncio logic."""

import asyncio

import pytest

from flip_reward.batching import Admission, MicroBatcher, QueueFull, SameRound, Shed


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


async def test_jobs_of_one_round_run_back_to_back_in_order():
    same_round: SameRound[int] = SameRound()
    ran: list[str] = []

    def job(i: int):
        def run() -> int:
            ran.append(f"job {i}")
            return i * 10

        return run

    async def caller(i: int) -> int:
        return await same_round.run(job(i))

    async def other() -> None:  # a task that is ready in the same round
        ran.append("other")

    tasks = [asyncio.create_task(caller(i)) for i in range(3)] + [asyncio.create_task(other())]
    results = await asyncio.gather(*tasks)
    assert results[:3] == [0, 10, 20]
    # The callers' round submitted all three; they ran together, after that round's other work.
    assert ran == ["other", "job 0", "job 1", "job 2"]


async def test_a_failing_job_fails_only_its_caller():
    same_round: SameRound[int] = SameRound()

    def boom() -> int:
        raise ValueError("boom")

    results = await asyncio.gather(
        same_round.run(lambda: 1), same_round.run(boom), same_round.run(lambda: 3), return_exceptions=True
    )
    assert results[0] == 1 and isinstance(results[1], ValueError) and results[2] == 3


async def test_the_job_of_a_caller_that_left_is_skipped():
    same_round: SameRound[int] = SameRound()
    ran: list[int] = []
    gone = same_round.run(lambda: ran.append(1) or 1)
    kept = same_round.run(lambda: ran.append(2) or 2)
    gone.cancel()
    assert await kept == 2 and ran == [2]


def test_same_round_works_on_each_new_event_loop():
    same_round: SameRound[int] = SameRound()
    loop = asyncio.new_event_loop()

    async def abandon() -> None:
        same_round.run(lambda: 1)
        loop.stop()  # the loop stops before the round that would run the job, and is closed

    loop.run_until_complete(abandon())
    loop.close()

    async def use() -> int:
        return await asyncio.wait_for(same_round.run(lambda: 2), 5)

    assert asyncio.run(use()) == 2


def test_admission_bounds_and_releases_on_any_exit():
    depths = []
    admission = Admission(limit=10, on_change=depths.append)
    with admission.admit(6):
        with pytest.raises(QueueFull), admission.admit(5):
            pass
        with admission.admit(4):
            assert admission.queued == 10
    with pytest.raises(RuntimeError), admission.admit(10):
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


def _established(rate: float, now: list[float]) -> Admission:
    """An Admission that has measured `rate` items per busy second."""
    admission = Admission(limit=1024, clock=lambda: now[0])
    with admission.admit(int(rate * 10), deadline_s=600):
        now[0] += 10.0
    assert admission.rate() == pytest.approx(rate, rel=0.01)
    return admission


def test_admission_does_not_push_a_request_in_flight_past_its_deadline():
    now = [0.0]
    admission = _established(2.0, now)
    with admission.admit(50, deadline_s=30):  # needs ~25 s of its 30
        # 15 more would take the queue to ~32.5 s: the first request would miss its deadline (504)
        with (
            pytest.raises(QueueFull, match="push a request in flight past its deadline"),
            admission.admit(15, deadline_s=100),
        ):
            pass
        with admission.admit(5, deadline_s=100):  # ~27.5 s: both still make it
            pass
        now[0] += 20.0  # 10 s left for the first; it is already late: no reason to refuse new work for it
        with admission.admit(15, deadline_s=100):
            pass
    assert admission.queued == 0


def test_a_batch_with_nothing_ahead_is_admitted_even_past_its_deadline():
    now = [0.0]
    admission = _established(2.0, now)
    with admission.admit(100, deadline_s=30):  # 50 s of work, alone: a 429 would repeat forever
        pass


def _burst(
    admission: Admission, now: list[float], n: int, deadline_s: float, rate: float, retries: int, retry_delay_s: float
) -> tuple[int, int]:
    """n single-item requests at once (a trainer's B×G rollout step), each retried `retries` times
    `retry_delay_s` apart when refused, while the engine finishes `rate` items a second in the order
    admitted. Returns (admitted at once, admitted in the end)."""
    held = []
    pending = n
    first = None
    for attempt in range(retries + 1):
        refused = 0
        for _ in range(pending):
            gate = admission.admit(1, deadline_s=deadline_s)
            try:
                gate.__enter__()
                held.append(gate)
            except QueueFull:
                refused += 1
        if first is None:
            first = n - refused
        pending = refused
        if not pending or attempt == retries:
            break
        now[0] += retry_delay_s  # the engine finishes rate × delay items meanwhile
        for _ in range(min(len(held), int(rate * retry_delay_s))):
            held.pop(0).__exit__(None, None, None)
    for gate in held:
        gate.__exit__(None, None, None)
    return first, n - pending


@pytest.mark.parametrize(
    "rate,n,admitted_at_once",
    [
        (50.0, 1024, 1024),  # a GPU-class rate: a 128 × 8 rollout step fits the 120 s deadline and the bound
        (8.0, 1024, 960),  # 8 items/s: 120 s of work is 960 items; the rest get 429 with Retry-After
        (2.0, 256, 240),  # this 2-core CPU machine's order of magnitude: 32 × 8 already does not fit
    ],
)
def test_sizing_a_trainer_burst_of_singles_with_the_default_deadline_and_bound(rate, n, admitted_at_once):
    """What B×G concurrent singles get with the defaults (FLIP_MAX_QUEUED_ITEMS 1024,
    FLIP_REQUEST_TIMEOUT_S 120): everything the engine can finish within the deadline is admitted at
    once, the rest is refused at once (429), never admitted into a 504. OpenRLHF's retries (5 tries,
    1 s apart, Retry-After ignored) then get in only as fast as the engine frees room."""
    now = [0.0]
    admission = _established(rate, now)
    first, final = _burst(admission, now, n, deadline_s=120, rate=rate, retries=4, retry_delay_s=1.0)
    assert first == admitted_at_once
    assert final - first <= int(rate * 4) + 1  # the retries only win what 4 s of engine time freed
    assert admission.queued == 0


async def test_waiting_work_is_shed_before_it_starts_when_the_measured_rate_drops():
    now = [0.0]
    admission = _established(10.0, now)
    with admission.admit(40, deadline_s=60) as first:
        await admission.start(first)  # an idle engine takes it at once
        assert first.started and admission.started == 40
        # 60 items at 10/s take 6 s: admitted within its 10 s, but started work may take only a
        # quarter of what is left, so it waits for its turn
        with admission.admit(20, deadline_s=10) as second:
            waiting = asyncio.create_task(admission.start(second))
            await asyncio.sleep(0)
            assert not waiting.done() and not second.started
            # The 40 started should take 4 s; after 5 s nothing has finished: the rate is at most
            # 40 / 5 = 8 items/s, and the 60 items need 7.5 s of the 5 s left: shed before starting.
            now[0] += 5.0
            admission.recheck()
            with pytest.raises(Shed, match="shed before it started") as shed:
                await waiting
            assert not second.started and admission.started == 40
            assert 1 <= shed.value.retry_after_s <= 60
    assert admission.queued == 0 and admission.started == 0


async def test_waiting_work_starts_when_room_frees_while_the_rate_holds():
    now = [0.0]
    admission = _established(10.0, now)
    first_gate = admission.admit(40, deadline_s=60)
    first = first_gate.__enter__()
    await admission.start(first)
    with admission.admit(20, deadline_s=10) as second:
        waiting = asyncio.create_task(admission.start(second))
        await asyncio.sleep(0)
        now[0] += 3.0  # within the 4 s the 40 take: not overdue, the rate holds, it keeps waiting
        admission.recheck()
        await asyncio.sleep(0)
        assert not waiting.done()
        first_gate.__exit__(None, None, None)  # the 40 finish: the 20 start with 7 s left
        await waiting
        assert second.started and admission.started == 20
    assert admission.queued == 0 and admission.started == 0


async def test_a_waiting_request_whose_deadline_passes_is_shed_not_started():
    now = [0.0]
    admission = _established(10.0, now)
    with admission.admit(40, deadline_s=60) as first:
        await admission.start(first)
        with admission.admit(10, deadline_s=8) as second:  # 50 / 10 = 5 s > a quarter of 8: waits
            waiting = asyncio.create_task(admission.start(second))
            await asyncio.sleep(0)
            now[0] += 8.0
            admission.recheck()
            with pytest.raises(Shed):
                await waiting
    assert admission.queued == 0
