"""Where the Scorer does the CPU work before the engine (copy guard, prompts, tokenization): a small
request in the event loop itself (a thread hop cost a single more than it saved), a large one in
the shared worker-thread hop (so a batch never stalls the loop). Same results either way."""

import asyncio
import threading

from flip_reward.config import Settings
from flip_reward.scoring.items import ScoreItem, ScoreOptions
from flip_reward.scoring.scorer import Scorer
from tests.fakes import FakeEngine, HashEmbedder

OPTIONS = ScoreOptions(similarity="hybrid", prompt_mode="direct", method="likelihood")


def _scored_in(items: list[ScoreItem]) -> tuple[set[str], list]:
    scorer = Scorer(FakeEngine(), HashEmbedder(), Settings())
    threads: set[str] = set()
    ready = scorer._ready

    def spy(item, options):
        threads.add(threading.current_thread().name)
        return ready(item, options)

    scorer._ready = spy  # type: ignore[method-assign]

    async def run():
        try:
            return await scorer.score(items, OPTIONS)
        finally:
            await scorer.close()

    return threads, asyncio.run(run())


def test_small_work_runs_in_the_loop_and_large_work_in_the_thread():
    small = [ScoreItem("Write a haiku about rain", "Soft rain on the roof, the city sleeps in grey")]
    threads, small_results = _scored_in(small)
    assert threads == {threading.main_thread().name}
    large = small * (Scorer.INLINE_CHARS // len(small[0].response) + 1)
    threads, large_results = _scored_in(large)
    assert threading.main_thread().name not in threads and len(threads) == 1
    assert [r.reward for r in large_results] == [small_results[0].reward] * len(large)


def test_a_long_single_item_goes_to_the_thread_too():
    long = ScoreItem("Summarize this", "word " * Scorer.INLINE_CHARS)
    threads, (result,) = _scored_in([long])
    assert threading.main_thread().name not in threads and result.reward is not None
