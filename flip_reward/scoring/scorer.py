"""A batch of (instruction, response) items in, one result per item out.

Three methods, all served by the same engine, each in its own module under flip_reward/scoring/methods/:
generate (the paper: infer the instruction, compare it), likelihood (score the real instruction's
log-probability after the response) and judge (the LLM-as-a-judge baseline). Each has a pure
`prepare` and an async `run`; the Scorer keeps what they share: the copy guard, the dispatch,
per-item error handling and the metrics.

All items of a batch go to the engine at once, so they share its continuous batching.
Nothing here knows about HTTP. Content that cannot earn a reward (empty, only <think>, only
copies of the instruction) gets the floor reward with its `unscorable` reason; a per-item failure
becomes `reward=None` with an `error` and its `code` (flip_reward/scoring/outcomes.py); a dead engine
raises EngineUnavailable for the whole batch. The per-item metrics are kept by the serving path
(flip_reward/api/serving.py), which knows the route.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from flip_reward import metrics
from flip_reward.batching import MicroBatcher, SameRound
from flip_reward.config import Settings
from flip_reward.embeddings.encoder import EmbeddingEncoder
from flip_reward.engines.base import Engine
from flip_reward.engines.prompt_logprobs import UnreadablePromptLogprobs
from flip_reward.scoring import guards
from flip_reward.scoring.fitting import PromptFitter
from flip_reward.scoring.items import ItemResult, ScoreItem, ScoreOptions
from flip_reward.scoring.methods.generate import Generate
from flip_reward.scoring.methods.judge import Judge
from flip_reward.scoring.methods.likelihood import Likelihood, likelihood_reward
from flip_reward.scoring.outcomes import ItemErrorCode, UnscorableReason, unscorable_reason

__all__ = ["ItemResult", "ScoreItem", "ScoreOptions", "Scorer", "apply_copy_guard", "likelihood_reward"]

log = logging.getLogger(__name__)


class Prepared(Protocol):
    """What a method's prepare gives back: the prompts (method-specific), or why there are none."""

    @property
    def error(self) -> str | None: ...

    @property
    def code(self) -> ItemErrorCode | None: ...

    @property
    def truncated(self) -> bool: ...


class ScoringMethod(Protocol):
    def prepare(self, item: ScoreItem, options: ScoreOptions) -> Any: ...

    async def run(
        self, engine: Engine, items: list[ScoreItem], prepared: list[Any], options: ScoreOptions
    ) -> list[ItemResult | BaseException]: ...


def apply_copy_guard(item: ScoreItem, fitter: PromptFitter, min_words: int) -> tuple[ScoreItem, float]:
    """The item with the passages its response copies from the instruction deleted, and the
    share of the response they held (see flip_reward/scoring/guards.py)."""
    response, copied = guards.remove_copied(item.instruction, fitter.clean(item.response), min_words)
    return ScoreItem(item.instruction, response, item.context, item.id), copied


@dataclass
class _Ready:
    """One item after the CPU work before the engine: guarded, checked, its prompts built."""

    item: ScoreItem  # after the copy guard (as given when the guard is off)
    copied: float | None  # share of the response the guard deleted; None with the guard off
    floor: UnscorableReason | None  # nothing to score: the floor reward, with this reason
    prepared: Any  # the method's prepare(); None with a floor


def _text_chars(item: ScoreItem) -> int:
    """The characters an item's CPU work reads (its cost grows with them)."""
    return len(item.instruction) + len(item.response) + sum(len(turn.get("content", "")) for turn in item.context)


def _run_each(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Every job's result, or the exception it raised: one request's failure stays its own."""
    out: list[Any] = []
    for job in jobs:
        try:
            out.append(job())
        except Exception as exc:
            out.append(exc)
    return out


class Scorer:
    # Requests whose CPU work (copy guard, prompt building, tokenization) shares one worker-thread
    # hop. A hop per request made concurrent singles fight the event loop for the GIL (64 of them
    # ran at half the items/s of one batch: the profile's top cost was handing work to threads).
    CPU_BATCH_REQUESTS = 64
    # Work up to this many characters of text runs in the event loop itself (about a millisecond
    # of CPU, like parsing the request's JSON there): the thread hop costs a single more than it
    # saves (bench/front_ceiling.py: 64 concurrent singles 1.08x, 1 at a time 1.5x the rewards/s),
    # and the work of the requests that arrive in the same round of the loop runs back to back
    # (SameRound). Larger work goes to the thread, so a batch never stalls the loop (health checks,
    # other requests).
    INLINE_CHARS = 8192

    def __init__(
        self,
        engine: Engine,
        embedder: EmbeddingEncoder | None,
        settings: Settings,
    ) -> None:
        self.engine = engine
        self.embedder = embedder
        self.settings = settings
        self.fitter = PromptFitter(engine.tokenizer, engine.max_model_len, settings.strip_think)
        self.methods: dict[str, ScoringMethod] = {
            "generate": Generate(self.fitter, settings, embedder),
            "likelihood": Likelihood(self.fitter, settings),
            "judge": Judge(self.fitter, settings),
        }
        # What has arrived while a hop runs goes together in the next one (no waiting window).
        self._cpu: MicroBatcher[Callable[[], Any], Any] = MicroBatcher(
            self._in_thread, self.CPU_BATCH_REQUESTS, max_wait_s=0.0
        )
        self._in_loop: SameRound[list[_Ready]] = SameRound()

    def apply_copy_guard(self, item: ScoreItem) -> tuple[ScoreItem, float]:
        return apply_copy_guard(item, self.fitter, self.settings.copy_guard_words)

    @staticmethod
    async def _in_thread(jobs: list[Callable[[], Any]]) -> list[Any]:
        return await asyncio.to_thread(_run_each, jobs)

    def _ready(self, item: ScoreItem, options: ScoreOptions) -> _Ready:
        """The CPU work before the engine, for one item (in the worker thread)."""
        # The copy guard (FLIP methods only; the judge sees the instruction anyway): score what the
        # response adds to the instruction.
        if options.copy_guard and options.method != "judge":
            guarded, copied = self.apply_copy_guard(item)
            floor = unscorable_reason(item.response, self.settings.strip_think, guarded.response, copied)
        else:
            guarded, copied = item, None
            floor = unscorable_reason(item.response, self.settings.strip_think)
        # Nothing to read (empty, only <think>, only copies): the floor reward, with the reason.
        prepared = None if floor else self.methods[options.method].prepare(guarded, options)
        return _Ready(guarded, copied, floor, prepared)

    async def score(self, items: list[ScoreItem], options: ScoreOptions) -> list[ItemResult]:
        def prepare() -> list[_Ready]:
            return [self._ready(item, options) for item in items]

        if sum(_text_chars(item) for item in items) <= self.INLINE_CHARS:
            ready = await self._in_loop.run(prepare)
        else:
            (ready,) = await self._cpu.submit([prepare])
            if isinstance(ready, Exception):
                raise ready
        results = [
            ItemResult(id=item.id, reward=self.settings.unscorable_reward, unscorable=r.floor)
            for item, r in zip(items, ready)
        ]
        todo = [i for i, r in enumerate(ready) if r.floor is None]
        if todo:
            for i, result in zip(todo, await self._score_with(options, [ready[i] for i in todo])):
                results[i] = result
        for result, r in zip(results, ready):
            result.copied_fraction = r.copied
            result.method = options.method
            if result.truncated:
                metrics.TRUNCATED_ITEMS.inc()
        return results

    async def _score_with(self, options: ScoreOptions, ready: list[_Ready]) -> list[ItemResult]:
        """Run the items that fit; an item whose prompt could not be built, or whose engine call
        failed, gets its error."""
        method = self.methods[options.method]
        items, prepared = [r.item for r in ready], [r.prepared for r in ready]
        results = [
            ItemResult(id=item.id, truncated=p.truncated, error=p.error, code=p.code)
            for item, p in zip(items, prepared)
        ]
        todo = [i for i, p in enumerate(prepared) if p.error is None]
        outputs = await method.run(self.engine, [items[i] for i in todo], [prepared[i] for i in todo], options)
        for i, out in zip(todo, outputs):
            if isinstance(out, BaseException):
                log.warning("engine failed on item %d: %r", i, out)
                if isinstance(out, UnreadablePromptLogprobs):  # never a shifted score: the item fails
                    results[i].error, results[i].code = f"engine error: {out}", "unreadable_logprobs"
                else:
                    results[i].error, results[i].code = f"engine error: {type(out).__name__}", "engine_error"
            else:
                results[i] = out
        return results

    async def close(self) -> None:
        await self._cpu.close()
