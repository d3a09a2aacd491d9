"""The one interface the scorer uses to talk to a language-model engine.

An engine turns prompt token ids into text (reconstruction) or into per-token log-probabilities
of the prompt itself (likelihood scoring). Prompt rendering and truncation happen above it, in
the scorer, with the engine's tokenizer, so every engine sees exactly the same token ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


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


class Engine(Protocol):
    model_name: str
    max_model_len: int

    @property
    def tokenizer(self) -> Any:
        """A Hugging Face tokenizer (apply_chat_template, encode, decode)."""

    async def generate(self, prompt_token_ids: list[int], params: GenerationParams) -> Generation:
        """Generate a completion. Cancelling the awaiting task aborts the engine request."""

    async def prompt_logprobs(self, prompt_token_ids: list[int], scored_from: int = 0) -> list[float | None]:
        """Log-probability of each prompt token given the ones before it (None for the first).

        `scored_from`: only positions from here on are needed; the engine may reuse cached work for
        the tokens before it and return None for those positions."""

    def is_healthy(self) -> bool:
        """False once the engine has died; the service then reports not ready."""

    def stats(self) -> dict[str, Any]:
        """Engine state for /info: unfinished (running + waiting) requests, prefix-cache totals."""
    # Progress probe for the watchdog (app/engines/watchdog.py).
    outstanding_requests: int
    last_progress_at: float  # time.monotonic() of the last output, or of the start of a busy spell

    def mark_failed(self, reason: str) -> None:
        """Fail every request in flight (EngineUnavailable) and every later one."""

    async def shutdown(self) -> None: ...
