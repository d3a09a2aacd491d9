"""Deterministic test doubles for unit tests of the logic above the engine (never for integration)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable

import numpy as np

from app.engines.base import EngineUnavailable, Generation, GenerationParams


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

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids)


def echo_response(prompt: str) -> str:
    """Pretend the model infers 'Explain <the first words of the response>'."""
    body = prompt.split('"""')[1].split() if '"""' in prompt else prompt.split()
    return json.dumps({"REASONING": "it explains", "INFERRED INSTRUCTION": "Explain " + " ".join(body[:6])})


class FakeEngine:
    """Answers with reply(prompt_text); the answer prefix the scorer adds is cut off first."""

    def __init__(self, reply: Callable[[str], str] = echo_response, max_model_len: int = 512) -> None:
        self.model_name = "fake-model"
        self.max_model_len = max_model_len
        self.tokenizer = WordTokenizer()
        self.reply = reply
        self.healthy = True
        self.calls: list[list[int]] = []
        self.shut_down = False
        self.outstanding_requests = 0
        self.last_progress_at = 0.0
        self.failure: str | None = None
        self.stuck = False  # True: generate() hangs like a stuck engine until mark_failed()

    def mark_failed(self, reason: str) -> None:
        self.failure = reason
        self.healthy = False

    async def generate(self, prompt_token_ids: list[int], params: GenerationParams) -> Generation:
        if not self.healthy:
            raise EngineUnavailable("fake engine is down")
        self.calls.append(prompt_token_ids)
        await asyncio.sleep(0)
        if self.stuck:
            self.outstanding_requests += 1
            try:
                while self.healthy:  # stuck until the watchdog fails the engine
                    await asyncio.sleep(0.01)
            finally:
                self.outstanding_requests -= 1
            raise EngineUnavailable(f"fake engine failed: {self.failure}")
        prompt = self.tokenizer.decode(prompt_token_ids)
        text = self.reply(prompt)
        prefix = '{"REASONING": "'
        if text.startswith(prefix):
            text = text[len(prefix):]
        return Generation(text, len(prompt_token_ids), len(text.split()), "stop")

    async def prompt_logprobs(self, prompt_token_ids: list[int]) -> list[float | None]:
        return [None] + [-1.0] * (len(prompt_token_ids) - 1)

    def is_healthy(self) -> bool:
        return self.healthy

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
