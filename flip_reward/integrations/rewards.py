"""What the trainer adapters share: one reward number per sample from a /batch_reward result,
and one process-wide limit on the requests an async adapter has in flight.

A result with a reward (the floor included, for a response with nothing to score) gives that
number. A result without one (the service failed on that item: its `code` says how) raises
FlipItemError, so that the trainer stops or retries instead of training on a made-up value;
None only comes back where the caller asked for it (on_failure="none").
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Iterable

from flip_reward.client import FlipRequestError


class FlipItemError(FlipRequestError):
    """The service answered, but could not score one of the samples (its `code` says why)."""

    def __init__(self, message: str, code: str | None) -> None:
        super().__init__(message)
        self.code = code


def reward_of(result: dict | None, on_failure: str = "raise") -> float | None:
    """The sample's reward; FlipItemError for a sample the service failed on (None with on_failure='none',
    which also stands for a whole chunk that failed)."""
    if result is None:
        return None  # only with on_failure="none": the client raises otherwise
    if result.get("reward") is None:
        if on_failure == "none":
            return None
        raise FlipItemError(
            f"flip-reward could not score a sample ({result.get('code')}): {result.get('error')}", result.get("code")
        )
    return float(result["reward"])


class LoopLimit:
    """At most `limit` requests in flight in this process, however many coroutines ask: a trainer
    that awaits one reward per sample (veRL's reward loop: B×G at once) sends them a few at a time
    instead of as one burst the server's queue bound turns into 429s. asyncio primitives belong
    to one event loop, so there is one semaphore per loop (a reward worker runs one)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    def gate(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        gate = self._gates.get(loop)
        if gate is None:
            gate = self._gates[loop] = asyncio.Semaphore(self.limit)
        return gate


def as_urls(value: object, default: str) -> tuple[str, ...]:
    """base_url as a string ("a,b" allowed), a list, or any sequence such as Hydra's ListConfig."""
    if value is None or value == "":
        value = default
    if isinstance(value, str):
        return tuple(u.strip() for u in value.split(",") if u.strip())
    if not isinstance(value, Iterable):  # Hydra's ListConfig is an Iterable, not a list
        raise TypeError(f"base_url: expected a URL or a list of URLs, got {type(value).__name__}")
    urls = tuple(str(u) for u in value)
    if not urls:
        raise ValueError("base_url: give at least one URL")
    return urls


URL_ENV, API_KEY_ENV = "FLIP_REWARD_URL", "FLIP_REWARD_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8000"


def env_service() -> tuple[tuple[str, ...], str | None]:
    """The service for adapters that a trainer loads by import path, with no arguments of ours:
    $FLIP_REWARD_URL (a URL or "a,b"; default http://127.0.0.1:8000) and $FLIP_REWARD_API_KEY."""
    return as_urls(os.environ.get(URL_ENV), DEFAULT_URL), os.environ.get(API_KEY_ENV) or None
