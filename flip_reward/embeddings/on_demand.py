"""The embedder, loaded only when something uses it.

Only `generate` with the `embedding` or `hybrid` similarity compares embeddings; the default method
(`likelihood`) and `judge` never do. So a deployment loads sentence-transformers (and torch, on the
GPU if FLIP_EMBEDDING_DEVICE says so) at start only when its default method needs it, and otherwise
on the first request that does; that request waits for the load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from flip_reward.config import Settings

log = logging.getLogger(__name__)


def embedder_needed_by_default(settings: Settings) -> str | None:
    """Why the default method needs the embedder at start (None: it does not)."""
    if settings.method == "generate" and settings.similarity != "f1":
        return f"at start: FLIP_METHOD=generate with FLIP_SIMILARITY={settings.similarity}"
    return None


class OnDemandEmbedder:
    """Stands where an Embedder stands (aencode, cache_info, close) and loads the real one, with
    `factory` in a worker thread, on the first aencode() or load(); concurrent callers share that load.
    A failed load is reported to its callers and tried again by the next one."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._loading: asyncio.Task[Any] | None = None
        self.embedder: Any = None
        self.reason: str | None = None  # why it was (or is being) loaded
        self.error: str | None = None  # of the last failed load
        self.load_seconds: float | None = None

    @property
    def loaded(self) -> bool:
        return self.embedder is not None

    async def load(self, reason: str) -> Any:
        if self.embedder is not None:
            return self.embedder
        if self._loading is None:
            self.reason = reason
            self._loading = asyncio.ensure_future(self._load())
        loading = self._loading
        try:
            return await asyncio.shield(loading)  # one caller giving up must not cancel it for the others
        finally:
            if loading.done() and loading.exception() is not None and self._loading is loading:
                self._loading = None

    async def _load(self) -> Any:
        started = time.perf_counter()
        log.info("loading the embedder (%s)", self.reason)
        try:
            embedder = await asyncio.to_thread(self._factory)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("loading the embedder failed")
            raise
        self.embedder, self.error = embedder, None
        self.load_seconds = time.perf_counter() - started
        log.info("embedder loaded in %.1f s", self.load_seconds)
        return embedder

    async def aencode(self, texts: list[str], cached: bool = False) -> np.ndarray:
        embedder = await self.load("on demand: the first request that compares embeddings")
        return await embedder.aencode(texts, cached=cached)

    def state(self) -> dict[str, Any]:
        """For /info: whether it is loaded, and why (or why not)."""
        if self.loaded:
            status = "loaded"
        elif self._loading is not None:
            status = "loading"
        else:
            status = "not loaded"
        return {
            "status": status,
            "reason": self.reason or "not needed yet: only generate with the embedding or hybrid similarity uses it",
            "load_seconds": self.load_seconds,
            "error": self.error,
        }

    def cache_info(self) -> dict[str, int] | None:
        return getattr(self.embedder, "cache_info", lambda: None)()

    async def close(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()  # the thread finishes on its own; its result is dropped
        if self.embedder is not None and hasattr(self.embedder, "close"):
            await self.embedder.close()
