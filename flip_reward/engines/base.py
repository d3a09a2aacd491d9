"""The one interface the scorer uses to talk to a language-model engine.

An engine turns prompt token ids into text (reconstruction) or into per-token log-probabilities
of the prompt itself (likelihood scoring). Prompt rendering and truncation happen above it, in
the scorer, with the engine's tokenizer, so every engine sees exactly the same token ids.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    temperature: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    regex: str | None = None  # constrain the output to this pattern (vLLM structured outputs)


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None


class EngineUnavailable(RuntimeError):
    """The engine is dead or shutting down: the request should fail with 503, not a reward."""


class Engine(abc.ABC):
    """What every engine implements: in process (vllm_local), remote (openai_remote), the unit tests'
    fake (tests/fakes.py). An abstract base, so an engine that misses a method fails when it is
    built, in every test, not on the first watchdog tick in production.

    Supervision lives here, once: an engine runs each raw engine call through supervised(), which
    keeps the watchdog's progress probe (outstanding count, last progress) and races the call
    against mark_failed(). An engine implements only the raw calls.

    Cancelling the task that awaits generate() or prompt_logprobs() aborts the engine's request
    (no separate abort call): the scorer cancels on deadlines and client disconnects."""

    model_name: str
    max_model_len: int
    # True where prompt_logprobs(scored_from=k) reads positions before k from a prefix cache that a
    # prefill-only generate() filled (the likelihood method's FLIP_LIKELIHOOD_PREFILL path).
    scores_from_prefix_cache: bool = False
    # How errors and the log name this engine ("the vLLM engine has failed: ...").
    label: str = "the engine"

    def __init__(self) -> None:
        # Progress probe for the watchdog (flip_reward/engines/watchdog.py).
        self.outstanding_requests = 0  # requests handed to the engine and not finished
        self.last_progress_at = time.monotonic()  # of the last output, or of the start of a busy spell
        self.failure: str | None = None  # set by mark_failed()
        self._failed: asyncio.Future[Any] | None = None  # resolved by mark_failed(); every call races it

    async def supervised(self, call: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run one raw engine call, call(*args), under supervision: refused if the engine cannot
        serve, counted as outstanding while it runs, progress noted when it returns, and failed
        with EngineUnavailable as soon as mark_failed() is called (a dead or hung engine may never
        finish it). Cancelling the caller, or the failure, cancels the raw call (the engine aborts
        the request)."""
        self.check_available()
        if self._failed is None:
            self._failed = asyncio.get_running_loop().create_future()
        if self.outstanding_requests == 0:
            self.last_progress_at = time.monotonic()  # an idle engine has not stalled
        self.outstanding_requests += 1
        task: asyncio.Future[Any] = asyncio.ensure_future(call(*args))
        try:
            await asyncio.wait({task, self._failed}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                result: T = task.result()
                self.note_progress()
                return result
            raise EngineUnavailable(f"{self.label} has failed: {self.failure}")
        finally:
            self.outstanding_requests -= 1
            if not task.done():
                task.cancel()

    def note_progress(self) -> None:
        """The engine produced output: a raw call that streams (or retries) reports each step, so a
        long call is not taken for a stall."""
        self.last_progress_at = time.monotonic()

    def check_available(self) -> None:
        """Raise EngineUnavailable when no call can run now; an engine adds its own conditions."""
        if self.failure is not None:
            raise EngineUnavailable(f"{self.label} has failed: {self.failure}")

    def mark_failed(self, reason: str) -> None:
        """Fail every request in flight now (EngineUnavailable, a 503) and every later one: the
        engine is dead or hung (called by the watchdog)."""
        if self.failure is None:
            self.failure = reason
            log.error("%s failed: %s", self.label, reason)
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(reason)

    @property
    @abc.abstractmethod
    def tokenizer(self) -> Any:
        """A Hugging Face tokenizer (apply_chat_template, encode, decode)."""

    @abc.abstractmethod
    async def generate(self, prompt_token_ids: list[int], params: GenerationParams) -> Generation:
        """Generate a completion (its engine call run through supervised())."""

    @abc.abstractmethod
    async def prompt_logprobs(self, prompt_token_ids: list[int], scored_from: int = 0) -> list[float | None]:
        """Log-probability of each prompt token given the ones before it (None for the first); its
        engine calls run through supervised().

        `scored_from`: only positions from here on are needed; the engine may reuse cached work for
        the tokens before it and return None for those positions."""

    @abc.abstractmethod
    def is_healthy(self) -> bool:
        """False once the engine has died (or every remote server is down); the service is then not ready."""

    def is_alive(self) -> bool:
        """False once the engine can never serve again: the watchdog then fails it and the service
        exits to be restarted. A remote fleet that is only cooling down is unhealthy (not ready) but
        alive; an in-process engine is alive while it is healthy."""
        return self.is_healthy()

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """Engine state for /info: at least `unfinished_requests` (running + waiting) and
        `prefix_cache` (queries, hits, hit_rate; None where unknown)."""

    @abc.abstractmethod
    async def shutdown(self) -> None: ...


def prefix_cache_stats(queries: int, hits: int) -> dict[str, Any]:
    """The `prefix_cache` entry of Engine.stats()."""
    return {"queries": queries, "hits": hits, "hit_rate": hits / queries if queries else None}
