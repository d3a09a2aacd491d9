"""An engine that costs nothing but answers in the real shapes, for the front-ceiling benchmark
(bench/front_ceiling.py): with it, the service's own work (HTTP, validation, tokenization, prompt
building, guards, scoring arithmetic, JSON) is all that is timed, so what one front process can feed
a GPU engine is measurable on any CPU.

- prompt_logprobs: a list of len(prompt) (the Engine contract, flip_reward/engines/base.py), None for the
  first position and for the positions before `scored_from`, a finite log-probability elsewhere.
- generate: a fixed inferred instruction that every prompt mode parses (a prefill of max_tokens=1,
  the likelihood method's first step, gives one token and no text).

It loads the real tokenizer of the configured model, so the prompts are the service's own.
"""

from __future__ import annotations

import asyncio
from typing import Any

from flip_reward.config import Settings
from flip_reward.engines.base import Engine, Generation, GenerationParams, prefix_cache_stats

INFERRED = "Give me three tips for staying focused while studying."


class NullEngine(Engine):
    # As the in-process vLLM engine: the likelihood method takes its default way (prefill, then cache).
    scores_from_prefix_cache = True

    def __init__(self, tokenizer: Any, model_name: str, max_model_len: int) -> None:
        super().__init__()
        self._tokenizer = tokenizer
        self.model_name = model_name
        self.max_model_len = max_model_len
        self._inferred_tokens = len(tokenizer.encode(INFERRED, add_special_tokens=False))
        self.requests = 0

    @classmethod
    def start(cls, settings: Settings) -> NullEngine:
        from flip_reward.models import BUILTIN_LLM_NAME, TRANSFORMERS_LOCK, resolve_llm

        with TRANSFORMERS_LOCK:  # the embedder loads beside it; transformers' imports are not thread-safe
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(resolve_llm(settings.model, settings.cache_dir))
        return cls(tokenizer, settings.model or BUILTIN_LLM_NAME, settings.max_model_len)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    async def generate(self, prompt_token_ids: list[int], params: GenerationParams) -> Generation:
        self.requests += 1
        await asyncio.sleep(0)  # an engine call yields to the event loop, as the real ones do
        if params.max_tokens == 1:
            return Generation("", len(prompt_token_ids), 1, "length")
        # JSON for the paper mode (its answer prefix opens the object), a plain line for the others.
        text = f'it asks for tips", "INFERRED INSTRUCTION": "{INFERRED}"}}' if params.regex else INFERRED
        return Generation(text, len(prompt_token_ids), self._inferred_tokens, "stop")

    async def prompt_logprobs(self, prompt_token_ids: list[int], scored_from: int = 0) -> list[float | None]:
        self.requests += 1
        await asyncio.sleep(0)
        start = max(1, scored_from)
        # Finite and varying by token, so rewards are not all one number.
        return [None] * start + [-1.0 - (t % 7) / 7 for t in prompt_token_ids[start:]]

    def is_healthy(self) -> bool:
        return self.failure is None

    def stats(self) -> dict[str, Any]:
        return {"unfinished_requests": 0, "prefix_cache": prefix_cache_stats(0, 0), "requests": self.requests}

    def mark_failed(self, reason: str) -> None:
        self.failure = reason

    async def shutdown(self) -> None:
        return None
