"""The remote engine: generation runs on one or more OpenAI-compatible servers (`vllm serve`, the
vLLM production stack, KServe), so the reward front scales on CPUs apart from the GPU fleet.

The prompt is rendered and tokenized here, with the same tokenizer files the server loads, and
sent as token ids to /v1/completions: the server sees exactly the ids the in-process engine
would get, and greedy decoding gives the same text. Requests go to the URLs in turn; a URL that
fails (connection error, timeout, 5xx, 429) is skipped for a cool-down and the request is
retried on the next one with backoff. The fleet being unreachable is EngineUnavailable (a 503
for the caller); a 4xx for one item is that item's error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx

from app import metrics
from app.config import Settings
from app.engines.base import EngineUnavailable, Generation, GenerationParams

log = logging.getLogger(__name__)

# The server's own defaults (from a model's generation_config.json) must not leak into the
# request: the local engine uses plain SamplingParams, so every sampling field is sent.
_NEUTRAL_SAMPLING = {
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}
_RETRY_STATUSES = {429, 500, 502, 503, 504}
_BACKOFF_BASE_S = 0.25
_BACKOFF_MAX_S = 4.0
_COOLDOWN_BASE_S = 0.5  # a failed URL is skipped 1 s, 2 s, 4 s ... (at most 30 s) after each failure


class RemoteRequestError(RuntimeError):
    """The server refused this request (4xx): the item gets an error, other items go on."""


@dataclass
class Backend:
    url: str
    down_until: float = 0.0  # monotonic time before which the URL is skipped
    failures: int = 0  # consecutive

    @property
    def up(self) -> bool:
        return time.monotonic() >= self.down_until

    def mark_failed(self) -> None:
        self.failures += 1
        self.down_until = time.monotonic() + min(_COOLDOWN_BASE_S * 2**self.failures, 30.0)

    def mark_ok(self) -> None:
        self.failures, self.down_until = 0, 0.0


class RemoteEngine:
    def __init__(
        self,
        urls: list[str],
        model_name: str,
        tokenizer: Any,
        max_model_len: int,
        max_concurrency: int = 64,
        timeout_s: float = 120.0,
        retries: int = 2,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not urls:
            raise ValueError("the remote engine needs at least one URL")
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.backends = [Backend(url.rstrip("/")) for url in urls]
        self.retries = retries
        self._tokenizer = tokenizer
        self._next = 0
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
            transport=transport,
        )
        self._closed = False

    @classmethod
    def start(cls, settings: Settings) -> RemoteEngine:
        """Load the tokenizer, wait for a server to answer, learn the model name and its context."""
        from app.models import TRANSFORMERS_LOCK, resolve_llm

        with TRANSFORMERS_LOCK:  # the embedder loads in another thread at the same time
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(resolve_llm(settings.model, settings.cache_dir))
        model, server_len = discover_model(settings.remote_urls, settings.remote_model, settings.remote_wait_s)
        max_model_len = min(settings.max_model_len, server_len or settings.max_model_len)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not one INFO line per request
        log.info("remote engine: model %s at %s, context %d", model, ", ".join(settings.remote_urls), max_model_len)
        return cls(
            settings.remote_urls,
            model,
            tokenizer,
            max_model_len,
            max_concurrency=settings.remote_max_concurrency,
            timeout_s=settings.remote_timeout_s,
            retries=settings.remote_retries,
        )

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def _pick(self) -> Backend:
        """The next URL in turn that is not cooling down; if all are, the one that recovers first."""
        count = len(self.backends)
        for step in range(count):
            backend = self.backends[(self._next + step) % count]
            if backend.up:
                self._next = (self._next + step + 1) % count
                return backend
        return min(self.backends, key=lambda b: b.down_until)

    async def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        if self._closed:
            raise EngineUnavailable("the remote engine is shut down")
        last_problem = "no attempt"
        async with self._semaphore:
            for attempt in range(self.retries + 1):
                if attempt:
                    await asyncio.sleep(min(_BACKOFF_BASE_S * 2 ** (attempt - 1), _BACKOFF_MAX_S))
                backend = self._pick()
                try:
                    response = await self._client.post(backend.url + path, json=payload)
                except httpx.TransportError as exc:  # connection refused, reset, timeout
                    backend.mark_failed()
                    last_problem = f"{backend.url}: {type(exc).__name__}"
                    metrics.REMOTE_REQUESTS.labels(url=backend.url, outcome="transport_error").inc()
                    continue
                if response.status_code in _RETRY_STATUSES:
                    backend.mark_failed()
                    last_problem = f"{backend.url}: HTTP {response.status_code}"
                    metrics.REMOTE_REQUESTS.labels(url=backend.url, outcome=f"http_{response.status_code}").inc()
                    continue
                backend.mark_ok()
                metrics.REMOTE_REQUESTS.labels(url=backend.url, outcome=f"http_{response.status_code}").inc()
                if response.status_code >= 400:
                    raise RemoteRequestError(f"{backend.url} answered {response.status_code}: {response.text[:300]}")
                return response.json()
        raise EngineUnavailable(f"no remote server answered after {self.retries + 1} attempts ({last_problem})")

    async def generate(self, prompt_token_ids: list[int], params: GenerationParams) -> Generation:
        payload = {
            "model": self.model_name,
            "prompt": prompt_token_ids,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            **_NEUTRAL_SAMPLING,
        }
        if params.temperature > 0 and params.seed is not None:
            payload["seed"] = params.seed
        if params.stop:
            payload["stop"] = list(params.stop)
        body = await self._post("/v1/completions", payload)
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        return Generation(
            text=choice["text"],
            prompt_tokens=usage.get("prompt_tokens", len(prompt_token_ids)),
            completion_tokens=usage.get("completion_tokens", 0),
            finish_reason=choice.get("finish_reason"),
        )

    async def prompt_logprobs(self, prompt_token_ids: list[int], scored_from: int = 0) -> list[float | None]:
        # `scored_from` is a hint this engine does not need: the server computes every position.
        # vLLM's extra parameter `prompt_logprobs`: 0 gives the logprob of the actual token at
        # every position. A server without it answers 4xx or leaves the field out.
        payload = {"model": self.model_name, "prompt": prompt_token_ids, "max_tokens": 1, "temperature": 0.0,
                   "prompt_logprobs": 0}
        body = await self._post("/v1/completions", payload)
        positions = body["choices"][0].get("prompt_logprobs")
        if positions is None:
            raise RemoteRequestError("the remote server does not return prompt_logprobs")
        result: list[float | None] = []
        for token_id, position in zip(prompt_token_ids, positions):
            result.append(None if position is None else position[str(token_id)]["logprob"])
        return result

    def is_healthy(self) -> bool:
        """Ready while some URL is not cooling down after failures."""
        return not self._closed and any(b.up for b in self.backends)

    async def shutdown(self) -> None:
        self._closed = True
        await self._client.aclose()


def discover_model(urls: list[str], wanted: str | None, wait_s: float) -> tuple[str, int | None]:
    """Ask each URL's /v1/models until one answers (the fleet may still be loading): the model to
    request (`wanted`, checked to be served, or the first listed) and its max_model_len."""
    deadline = time.monotonic() + wait_s
    problems: dict[str, str] = {}
    with httpx.Client(timeout=10.0) as client:
        while True:
            for url in urls:
                try:
                    response = client.get(url.rstrip("/") + "/v1/models")
                    response.raise_for_status()
                    cards = response.json()["data"]
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    problems[url] = f"{type(exc).__name__}: {exc}"
                    continue
                served = {card["id"]: card.get("max_model_len") for card in cards}
                if wanted is None and served:
                    first = cards[0]["id"]
                    return first, served[first]
                if wanted in served:
                    return wanted, served[wanted]
                raise RuntimeError(f"{url} does not serve model {wanted!r}; it serves {sorted(served)}")
            if time.monotonic() >= deadline:
                raise RuntimeError(f"no remote server answered /v1/models within {wait_s:.0f} s: {problems}")
            time.sleep(2.0)
