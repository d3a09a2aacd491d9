"""Deterministic test doubles for unit tests of the logic above the engine (never for integration)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable

import numpy as np

from flip_reward.engines.base import Engine, EngineUnavailable, Generation, GenerationParams


class WordTokenizer:
    """One token per whitespace-separated word; reversible, with a tiny chat template."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self.words: list[str] = []

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        text = " ".join(f"<{m['role']}> {m['content']}" for m in messages)
        return text + (" <assistant>" if add_generation_prompt else "")

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = []
        for word in text.split():
            if word not in self.vocab:
                self.vocab[word] = len(self.words)
                self.words.append(word)
            ids.append(self.vocab[word])
        return ids

    def __call__(self, text: str, add_special_tokens: bool = False, return_offsets_mapping: bool = False):
        import re

        spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        out = {"input_ids": self.encode(text)}
        if return_offsets_mapping:
            out["offset_mapping"] = spans
        return out

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids)


def echo_response(prompt: str) -> str:
    """Pretend the model infers 'Explain <the first words of the response>'."""
    body = prompt.split('"""')[1].split() if '"""' in prompt else prompt.split()
    return json.dumps({"REASONING": "it explains", "INFERRED INSTRUCTION": "Explain " + " ".join(body[:6])})


class FakeEngine(Engine):
    """Answers with reply(prompt_text); the answer prefix the scorer adds is cut off first. The
    outstanding count, progress and failure race come from Engine.supervised, as in the real engines."""

    label = "fake engine"

    def __init__(self, reply: Callable[[str], str] = echo_response, max_model_len: int = 512) -> None:
        super().__init__()
        self.model_name = "fake-model"
        self.max_model_len = max_model_len
        self._tokenizer = WordTokenizer()
        self.reply = reply
        self.healthy = True
        self.calls: list[list[int]] = []
        self.scored_from: list[int] = []  # prompt_logprobs' hint, per call
        self.logprob_calls: list[tuple[list[int], int]] = []  # (prompt, scored_from) of each prompt_logprobs call
        self.shut_down = False
        self.delay_s = 0.0  # seconds each generation takes (to test deadlines and queueing)
        self.running = 0  # generations in progress; a cancelled one leaves at once
        self.last_params: GenerationParams | None = None
        self.stuck = False  # True: generate() hangs like a stuck engine until mark_failed()

    @property
    def tokenizer(self) -> WordTokenizer:
        return self._tokenizer

    def mark_failed(self, reason: str) -> None:
        super().mark_failed(reason)
        self.healthy = False

    def check_available(self) -> None:
        super().check_available()
        if not self.healthy:
            raise EngineUnavailable("fake engine is down")

    async def generate(self, prompt_token_ids: list[int], params: GenerationParams) -> Generation:
        return await self.supervised(self._generate, prompt_token_ids, params)

    async def prompt_logprobs(self, prompt_token_ids: list[int], scored_from: int = 0) -> list[float | None]:
        return await self.supervised(self._prompt_logprobs, prompt_token_ids, scored_from)

    async def _generate(self, prompt_token_ids: list[int], params: GenerationParams) -> Generation:
        """The raw call: waits delay_s (or, stuck, until the supervision gives up on it), then replies."""
        self.calls.append(prompt_token_ids)
        self.last_params = params
        self.running += 1
        try:
            await asyncio.sleep(self.delay_s)
            while self.stuck:  # noqa: ASYNC110  # stuck until the watchdog fails the engine
                await asyncio.sleep(0.01)
        finally:
            self.running -= 1
        prompt = self.tokenizer.decode(prompt_token_ids)
        text = self.reply(prompt)
        prefix = '{"REASONING": "'
        text = text.removeprefix(prefix)
        words = text.split(" ")
        if len(words) > params.max_tokens:  # one token per word, as the tokenizer counts
            return Generation(" ".join(words[: params.max_tokens]), len(prompt_token_ids), params.max_tokens, "length")
        return Generation(text, len(prompt_token_ids), len(text.split()), "stop")

    async def _prompt_logprobs(self, prompt_token_ids: list[int], scored_from: int) -> list[float | None]:
        """A copying model: a word seen earlier in the prompt is likely (-0.1), a new one is not (-3)."""
        self.calls.append(prompt_token_ids)
        self.scored_from.append(scored_from)
        self.logprob_calls.append((prompt_token_ids, scored_from))
        await asyncio.sleep(0)
        return [None] + [-0.1 if t in prompt_token_ids[:i] else -3.0 for i, t in enumerate(prompt_token_ids) if i > 0]

    def is_healthy(self) -> bool:
        return self.healthy

    def stats(self) -> dict:
        return {"unfinished_requests": self.running, "prefix_cache": None}

    async def shutdown(self) -> None:
        self.shut_down = True


class HashEmbedder:
    """Bag-of-words vectors (hashed), L2-normalised: same words -> cosine 1."""

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)

    async def aencode(self, texts: list[str], cached: bool = False) -> np.ndarray:
        return self.encode(texts)
