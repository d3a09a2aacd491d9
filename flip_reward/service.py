"""The running service: the engine, the embedder and the scorer, and whether they are ready.

Models load in the background after the HTTP server is up, so /health answers at once and
/ready turns 200 once the engine is loaded (and back to 503 if the engine dies). The embedder
loads beside the engine only when the default method needs it (generate with the embedding or
hybrid similarity), otherwise on the first request that does (flip_reward/embeddings/on_demand.py).
"""

from __future__ import annotations

import asyncio
import enum
import gc
import logging
import time
from collections.abc import Callable
from typing import Any, get_args

from flip_reward import metrics
from flip_reward.batching import Admission
from flip_reward.config import Method, Settings
from flip_reward.embeddings.encoder import Embedder
from flip_reward.embeddings.on_demand import OnDemandEmbedder, embedder_needed_by_default
from flip_reward.engines.base import Engine
from flip_reward.engines.watchdog import watch
from flip_reward.models import (
    BUILTIN_EMBEDDING_NAME,
    BUILTIN_LLM_NAME,
    TRANSFORMERS_LOCK,
    resolve_embedding_model,
    resolve_llm,
)
from flip_reward.scoring.scorer import Scorer

log = logging.getLogger(__name__)

# Net allocations between young garbage collections once the models are loaded (CPython: 700).
YOUNG_COLLECTION_EVERY = 10_000


class Status(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPING = "stopping"


def load_vllm_engine(settings: Settings) -> Engine:
    from flip_reward.engines.vllm_local import VLLMEngine

    path = resolve_llm(settings.model, settings.cache_dir)
    return VLLMEngine.start(path, settings, model_name=settings.model or BUILTIN_LLM_NAME)


def load_engine(settings: Settings) -> Engine:
    """The engine FLIP_ENGINE names: vLLM in this process, or remote OpenAI-compatible servers."""
    if settings.engine == "remote":
        from flip_reward.engines.openai_remote import RemoteEngine

        return RemoteEngine.start(settings)
    return load_vllm_engine(settings)


def load_embedder(settings: Settings) -> Embedder:
    with TRANSFORMERS_LOCK:  # the remote engine's tokenizer may be loading beside it
        return Embedder(
            resolve_embedding_model(settings.embedding_model),
            device=settings.embedding_device,
            cache_size=settings.embedding_cache_size,
            max_batch_size=settings.embedding_batch_size,
            max_wait_ms=settings.embedding_batch_wait_ms,
            model_name=settings.embedding_model or BUILTIN_EMBEDDING_NAME,
        )


class FlipService:
    def __init__(
        self,
        settings: Settings,
        engine_factory: Callable[[Settings], Engine] = load_engine,
        embedder_factory: Callable[[Settings], Any] = load_embedder,
    ) -> None:
        self.settings = settings
        self._engine_factory = engine_factory
        self._embedder_factory = embedder_factory
        self.status = Status.LOADING
        self.load_error: str | None = None
        self.load_seconds: float | None = None
        self.engine: Engine | None = None
        self.embedder = OnDemandEmbedder(lambda: self._embedder_factory(self.settings))
        self.scorer: Scorer | None = None
        # Items accepted by the routes and not yet scored; the bound turns a burst into 429s.
        self.admission = Admission(settings.max_queued_items, on_change=metrics.QUEUE_DEPTH.set)
        self.engine_failure: str | None = None  # set by the watchdog; the process then exits
        self.on_engine_failure: Callable[[str], None] | None = None
        self._watchdog: asyncio.Task | None = None

    async def load(self) -> None:
        started = time.perf_counter()
        needed = embedder_needed_by_default(self.settings)
        try:
            # The engine loader blocks (process start, weight loading): keep it off the event loop,
            # with the embedder loading beside it where the default method needs it.
            engine, *_ = await asyncio.gather(
                asyncio.to_thread(self._engine_factory, self.settings),
                *([self.embedder.load(needed)] if needed else []),
            )
        except Exception as exc:  # reported on /ready and in the log; the CLI exits on it
            log.exception("model loading failed")
            self.status, self.load_error = Status.FAILED, f"{type(exc).__name__}: {exc}"
            return
        self.engine = engine
        self.scorer = Scorer(engine, self.embedder, self.settings)
        # The models left about half a million long-lived objects (torch, transformers) that every full
        # garbage collection walked again: under load it took over half of the front's CPU (measured
        # with bench/front_ceiling.py). Frozen, the collector skips them; they are never freed anyway.
        gc.collect()
        gc.freeze()
        # Young collections walk every object still alive there: under load, the requests in flight.
        # At CPython's 700 allocations per collection, 64 concurrent likelihood singles spent 0.08 ms
        # of CPU per reward in them, at 10,000 0.045 ms (gc.callbacks in a front on the ceiling bench).
        gc.set_threshold(YOUNG_COLLECTION_EVERY, *gc.get_threshold()[1:])
        self.load_seconds = time.perf_counter() - started
        self.status = Status.READY
        log.info("models loaded in %.1f s; ready", self.load_seconds)
        self._watchdog = asyncio.create_task(
            watch(engine, self._engine_failed, self.settings.watchdog_interval_s, self.settings.engine_stall_s)
        )

    def _engine_failed(self, reason: str) -> None:
        if self.status == Status.STOPPING:  # the engine going down during shutdown is expected
            return
        self.engine_failure = reason
        log.error("engine failure: %s; the service is not ready and will exit", reason)
        if self.on_engine_failure is not None:
            self.on_engine_failure(reason)

    @property
    def model_name(self) -> str:
        """The engine's model, or (before it is loaded) the one it will load."""
        return self.engine.model_name if self.engine else (self.settings.model or BUILTIN_LLM_NAME)

    @property
    def ready(self) -> bool:
        return self.status == Status.READY and self.engine is not None and self.engine.is_healthy()

    def not_ready_reason(self) -> str:
        if self.engine_failure is not None:
            return f"the engine has failed ({self.engine_failure}); the service is exiting to be restarted"
        if self.status == Status.READY and self.engine is not None and not self.engine.is_healthy():
            return "the engine has stopped"
        if self.status == Status.FAILED:
            return f"model loading failed: {self.load_error}"
        return f"service is {self.status.value}"

    def info(self) -> dict[str, Any]:
        from flip_reward.scoring.prompts import DISTRACTOR_INSTRUCTIONS, PROMPT_VERSION

        s = self.settings
        return {
            "status": self.status.value,
            "model": self.model_name,
            "embedding_model": s.embedding_model or BUILTIN_EMBEDDING_NAME,
            "embedder": self.embedder.state(),
            "prompt_version": PROMPT_VERSION,
            "method": s.method,
            "methods": list(get_args(Method)),
            "likelihood": {
                "scale": s.likelihood_scale,
                "distractors": s.likelihood_distractors,
                "distractor_instructions": list(DISTRACTOR_INSTRUCTIONS[: s.likelihood_distractors]),
                "max_instruction_tokens": s.max_instruction_tokens,
            },
            "copy_guard": {"on": s.copy_guard, "min_words": s.copy_guard_words},
            "prompt_mode": s.prompt_mode,
            "similarity": s.similarity,
            "similarities": ["f1", "embedding", "hybrid"],
            "hybrid_weight": s.hybrid_weight,
            "sampling": {"temperature": s.temperature, "max_tokens": s.max_tokens, "seed": s.seed},
            "limits": {"max_batch_items": s.max_batch_items, "max_model_len": s.max_model_len},
            "load_seconds": self.load_seconds,
            "throughput": {
                "queued_items": self.admission.queued,
                "max_queued_items": s.max_queued_items,
                "request_timeout_s": s.request_timeout_s,
                "max_request_timeout_s": s.max_request_timeout_s,
                "engine": self.engine.stats() if self.engine else None,
                "embedding_cache": self.embedder.cache_info(),
            },
        }

    def stop_accepting(self) -> None:
        """Shutdown has begun: /ready answers 503 and new scoring requests are refused with 503,
        while the ones in flight go on."""
        self.status = Status.STOPPING

    async def shutdown(self) -> None:
        self.status = Status.STOPPING
        await self.embedder.close()
        if self.scorer is not None:
            await self.scorer.close()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.engine is not None:
            await self.engine.shutdown()
