"""The remote engine: generation and prompt log-probabilities run on a fleet of stock `vllm serve`
servers (or any OpenAI-compatible ones), so the reward front scales on CPUs apart from the GPUs.

The prompt is rendered and tokenized here, with the same tokenizer the servers load (checked at
start: the model name and a tokenization round trip through each server's /tokenize), and sent as
token ids: the server sees exactly the ids the in-process engine would get.

- Generation goes to /v1/completions with every sampling field set (no server default leaks in)
  and the structured-output regex forwarded.
- Prompt log-probabilities go to vLLM's token-in/token-out endpoint /inference/v1/generate when
  the servers offer it (`vllm serve --enable-scale-out --enable-prompt-tokens-details`): it takes
  vLLM's own SamplingParams, so a request may read the prefix cache (`skip_reading_prefix_cache`,
  which /v1/completions forces on for prompt-logprobs requests) and says how many tokens it found
  cached. A distractor scored after a response then costs only its own tokens, as in process.
  Without it, /v1/completions, where every request prefills and scores every position.
- Balancing: the server with the fewest requests outstanding, except that a prompt goes to the
  server that was last sent its longest prefix (prefix affinity: an item's distractors follow its
  real prompt, where the response is cached) unless that server is busier by more than a bound.
  Each server's connections are renewed after a lifetime, so a URL that is a Kubernetes Service
  spreads over its pods instead of pinning to the ones first connected.
- Failures: a server that fails (connection error, timeout, 5xx, 429) is cooled down (skipped 1 s,
  2 s, 4 s ... at most 30 s) and the request is retried on another with backoff. The fleet being
  unreachable is EngineUnavailable (a 503 for the caller); a 4xx for one item is that item's error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx

from flip_reward import metrics
from flip_reward.config import Settings
from flip_reward.engines.base import Engine, EngineUnavailable, Generation, GenerationParams, prefix_cache_stats
from flip_reward.engines.fleet import Backend, Connections, choose_backend, prefix_block_hashes, resolve_addresses
from flip_reward.engines.fleet_checks import (
    GENERATE_PATH,
    NAN_REFUSAL,
    PromptLogprobsEndpoint,
    check_fleet,
    probe_runtime,
    prompt_logprobs_payload,
)
from flip_reward.engines.prompt_logprobs import UnreadablePromptLogprobs, align_prompt_logprobs, remote_logprob

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
COMPLETIONS_PATH = "/v1/completions"


class RemoteRequestError(RuntimeError):
    """The server refused this request (4xx): the item gets an error, other items go on."""


class RemoteEngine(Engine):
    label = "the remote engine"

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
        api_key: str | None = None,
        connection_lifetime_s: float = 60.0,
        prefix_affinity: bool = True,
        affinity_max_imbalance: int = 8,
        prompt_logprobs_endpoint: PromptLogprobsEndpoint = "completions",
        resolve_s: float = 0.0,
        runtime: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.runtime = runtime or {}
        if not urls:
            raise ValueError("the remote engine needs at least one URL")
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.urls = [url.rstrip("/") for url in urls]  # as configured
        self.backends: list[Backend] = []  # as used: the URLs, or one per address they resolve to
        self.resolve_s = resolve_s
        self._resolver = resolve_addresses
        self._resolving: asyncio.Task | None = None
        self._resolved = asyncio.Event()
        self.retries = retries
        self.prefix_affinity = prefix_affinity
        self.affinity_max_imbalance = affinity_max_imbalance
        self.prompt_logprobs_endpoint: PromptLogprobsEndpoint = prompt_logprobs_endpoint
        self._tokenizer = tokenizer
        self._rotation = 0  # breaks ties between equally loaded servers in turn
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._connections = Connections(
            httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            {"Authorization": f"Bearer {api_key}"} if api_key else {},
            max_concurrency,
            connection_lifetime_s,
            transport,
        )
        self._closed = False
        self.prompt_tokens = 0  # sent, and of those, found in the servers' prefix caches (where reported)
        self.cached_tokens = 0
        self._set_backends({url: url for url in self.urls})

    def _set_backends(self, targets: dict[str, str]) -> None:
        """Use these servers (URL -> the configured URL it came from); one already known keeps its
        state (load, failures, prefixes). One that left is no longer chosen; its requests in flight
        finish."""
        known = {b.url: b for b in self.backends}
        self.backends = [known.get(url) or Backend(url, source=source) for url, source in targets.items()]
        for backend in self.backends:  # read at scrape time; the latest engine of a process wins
            if backend.url not in known:
                metrics.REMOTE_SERVER_OUTSTANDING.labels(url=backend.url).set_function(backend.outstanding_gauge)
                metrics.REMOTE_SERVER_COOLING.labels(url=backend.url).set_function(backend.cooling_gauge)
        for gone in set(known) - set(targets):
            log.info("remote server %s left the fleet", gone)
            self._connections.retire(known[gone])

    async def refresh_backends(self) -> None:
        """Resolve each configured URL's host again (a headless Service: one address per ready pod)
        and use one backend per address; a URL that does not resolve keeps its current servers."""
        targets: dict[str, str] = {}
        for configured in self.urls:
            try:
                resolved = await self._resolver(configured)
            except OSError as exc:
                log.warning("cannot resolve %s (%s); keeping its servers", configured, exc)
                resolved = [b.url for b in self.backends if b.source == configured]
            for url in resolved or [configured]:
                targets.setdefault(url, configured)
        self._set_backends(targets)
        self._resolved.set()

    async def _resolve_forever(self) -> None:
        while not self._closed:
            await self.refresh_backends()
            await asyncio.sleep(self.resolve_s)

    @classmethod
    def start(cls, settings: Settings) -> RemoteEngine:
        """Load the tokenizer, wait for a server to answer, check that every answering server serves
        this tokenizer's model, and learn its name, context and whether it offers cache reads."""
        from flip_reward.models import BUILTIN_LLM_NAME, TRANSFORMERS_LOCK, resolve_llm

        with TRANSFORMERS_LOCK:  # the embedder loads in another thread at the same time
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(resolve_llm(settings.model, settings.cache_dir))
        api_key = settings.remote_api_key_value()
        front_model = settings.model or BUILTIN_LLM_NAME
        with httpx.Client(timeout=30.0, headers={"Authorization": f"Bearer {api_key}"} if api_key else {}) as http:
            model, server_len, endpoint = check_fleet(
                http, settings.remote_urls, settings.remote_wait_s, settings.remote_model, tokenizer, front_model,
                settings.remote_prompt_logprobs,
            )  # fmt: skip
            runtime = probe_runtime(http, settings.remote_urls[0], model, tokenizer) if endpoint == "generate" else {}
        max_model_len = min(settings.max_model_len, server_len or settings.max_model_len)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not one INFO line per request
        log.info(
            "remote engine: model %s at %s, context %d, prompt logprobs via %s, vLLM %s, model runner %s",
            model,
            ", ".join(settings.remote_urls),
            max_model_len,
            endpoint,
            runtime.get("vllm_version") or "unknown",
            runtime.get("model_runner") or "unknown",
        )
        if endpoint == "completions":
            log.warning(
                "the servers do not offer %s with cached-token counts: every prompt-logprobs request "
                "prefills its whole prompt (start vllm serve with --enable-scale-out "
                "--enable-prompt-tokens-details to reuse the prefix cache)",
                GENERATE_PATH,
            )
        return cls(
            settings.remote_urls,
            model,
            tokenizer,
            max_model_len,
            max_concurrency=settings.remote_max_concurrency,
            timeout_s=settings.remote_timeout_s,
            retries=settings.remote_retries,
            api_key=api_key,
            connection_lifetime_s=settings.remote_connection_lifetime_s,
            prefix_affinity=settings.remote_prefix_affinity,
            affinity_max_imbalance=settings.remote_affinity_max_imbalance,
            prompt_logprobs_endpoint=endpoint,
            resolve_s=settings.remote_resolve_s,
            runtime=runtime,
        )

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    # --- choosing a server

    def _pick(self, hashes: list[int], exclude: set[str]) -> Backend:
        turn, self._rotation = self._rotation, self._rotation + 1
        return choose_backend(
            self.backends, hashes if self.prefix_affinity else [], exclude, turn, self.affinity_max_imbalance
        )

    # --- sending

    async def _send(self, backend: Backend, path: str, payload: dict[str, Any]) -> httpx.Response:
        pool = self._connections.acquire(backend)
        backend.outstanding += 1
        backend.requests_total += 1
        try:
            return await pool.client.post(backend.url + path, json=payload)
        finally:
            backend.outstanding -= 1
            self._connections.release(pool)

    async def _post(self, path: str, payload: dict[str, Any], token_ids: list[int]) -> dict[str, Any]:
        """POST to one server, retrying on others, under the engine's supervision (Engine.supervised)."""
        return await self.supervised(self._post_with_retries, path, payload, token_ids)

    async def _first_resolution(self) -> None:
        """With FLIP_REMOTE_RESOLVE_S: start resolving the URLs, and wait for the first resolution
        before the first choice of a server."""
        if self._resolving is None:
            self._resolving = asyncio.ensure_future(self._resolve_forever())
        if not self._resolved.is_set():
            await asyncio.wait([asyncio.ensure_future(self._resolved.wait())], timeout=10.0)

    async def _post_with_retries(self, path: str, payload: dict[str, Any], token_ids: list[int]) -> dict[str, Any]:
        """The raw engine call: one request sent until a server answers, each answer noted as progress."""
        if self.resolve_s > 0:
            await self._first_resolution()
        hashes = prefix_block_hashes(token_ids) if self.prefix_affinity else []
        tried: set[str] = set()
        last_problem = "no attempt"
        async with self._semaphore:
            for attempt in range(self.retries + 1):
                if attempt:
                    await asyncio.sleep(min(_BACKOFF_BASE_S * 2 ** (attempt - 1), _BACKOFF_MAX_S))
                if len(tried) == len(self.backends):
                    tried.clear()  # every server tried once: any may be retried
                backend = self._pick(hashes, tried)
                tried.add(backend.url)
                backend.remember(hashes)
                try:
                    response = await self._send(backend, path, payload)
                except httpx.TransportError as exc:  # connection refused, reset, timeout
                    last_problem = f"{backend.url}: {type(exc).__name__}"
                    backend.mark_failed(last_problem)
                    metrics.series(metrics.REMOTE_REQUESTS, backend.url, "transport_error").inc()
                    log.warning(
                        "remote server failed (%s); cooling it down for %.1f s",
                        last_problem,
                        backend.down_until - time.monotonic(),
                    )
                    continue
                self.note_progress()
                metrics.series(metrics.REMOTE_REQUESTS, backend.url, f"http_{response.status_code}").inc()
                if response.status_code in _RETRY_STATUSES:
                    last_problem = f"{backend.url}: HTTP {response.status_code}"
                    backend.mark_failed(last_problem)
                    continue
                backend.mark_ok()
                if response.status_code >= 400:
                    raise RemoteRequestError(f"{backend.url} answered {response.status_code}: {response.text[:300]}")
                return response.json()
        raise EngineUnavailable(f"no remote server answered after {self.retries + 1} attempts ({last_problem})")

    def check_available(self) -> None:
        if self._closed:
            raise EngineUnavailable("the remote engine is shut down")
        super().check_available()

    def _count_usage(self, body: dict[str, Any]) -> int | None:
        """Prompt tokens sent and found cached, from the usage block; the cached count or None."""
        usage = body.get("usage") or {}
        self.prompt_tokens += usage.get("prompt_tokens") or 0
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached is not None:
            self.cached_tokens += cached
        return cached

    # --- the engine interface

    async def generate(self, prompt_token_ids: list[int], params: GenerationParams) -> Generation:
        payload: dict[str, Any] = {
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
        if params.regex:
            payload["structured_outputs"] = {"regex": params.regex}
        body = await self._post(COMPLETIONS_PATH, payload, prompt_token_ids)
        self._count_usage(body)
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        return Generation(
            text=choice["text"],
            prompt_tokens=usage.get("prompt_tokens", len(prompt_token_ids)),
            completion_tokens=usage.get("completion_tokens", 0),
            finish_reason=choice.get("finish_reason"),
        )

    async def prompt_logprobs(self, prompt_token_ids: list[int], scored_from: int = 0) -> list[float | None]:
        if self.prompt_logprobs_endpoint == "completions":
            return await self._completion_prompt_logprobs(prompt_token_ids)
        # As in process (vllm_local): read the prefix cache when only a tail is needed, and run the
        # request again without it when the cache reached into the tail or the reply cannot be
        # aligned to the prompt (flip_reward/engines/prompt_logprobs.py: either runner's layout).
        if scored_from > 1:
            try:
                positions, cached = await self._generate_prompt_logprobs(prompt_token_ids, read_cache=True)
            except RemoteRequestError as exc:
                # The V1 runner's unwritten slots of cached positions may hold NaN, which vLLM then
                # refuses to serialize (400 "Out of range float values are not JSON compliant").
                if NAN_REFUSAL not in str(exc):
                    raise
            else:
                if cached < scored_from:
                    try:
                        return read_logprobs(prompt_token_ids, positions, cached)
                    except UnreadablePromptLogprobs as exc:
                        log.info("prompt logprobs read from the cache were unreadable (%s); once more without it", exc)
        positions, cached = await self._generate_prompt_logprobs(prompt_token_ids, read_cache=False)
        return read_logprobs(prompt_token_ids, positions, cached)

    async def _generate_prompt_logprobs(self, ids: list[int], read_cache: bool) -> tuple[Any, int]:
        """The reply's prompt_logprobs list, as sent, and the cached-token count."""
        body = await self._post(GENERATE_PATH, prompt_logprobs_payload(self.model_name, ids, read_cache), ids)
        cached = self._count_usage(body)
        if cached is None:
            raise RemoteRequestError(
                f"{GENERATE_PATH} gave no cached-token count (start vllm serve with --enable-prompt-tokens-details)"
            )
        return body.get("prompt_logprobs"), cached

    async def _completion_prompt_logprobs(self, ids: list[int]) -> list[float | None]:
        # vLLM's extra parameter `prompt_logprobs`: 0 gives the logprob of the actual token at
        # every position (vLLM skips the prefix cache for such requests unless told otherwise:
        # vllm/sampling_params.py, `skip_reading_prefix_cache`); a server that reports a cache hit
        # anyway is read by its count.
        payload = {"model": self.model_name, "prompt": ids, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}
        body = await self._post(COMPLETIONS_PATH, payload, ids)
        cached = self._count_usage(body) or 0
        return read_logprobs(ids, body["choices"][0].get("prompt_logprobs"), cached)

    def is_healthy(self) -> bool:
        """Ready while some server is not cooling down after failures."""
        return self.is_alive() and any(b.up for b in self.backends)

    def is_alive(self) -> bool:
        """A fleet that is only cooling down is not ready but may come back: the watchdog leaves it."""
        return not self._closed and self.failure is None

    def stats(self) -> dict[str, Any]:
        """For /info: requests outstanding, the servers' prefix-cache record for our requests, and
        each server's load and failures."""
        return {
            "unfinished_requests": self.outstanding_requests,
            "prefix_cache": prefix_cache_stats(self.prompt_tokens, self.cached_tokens),
            "prompt_logprobs_endpoint": GENERATE_PATH
            if self.prompt_logprobs_endpoint == "generate"
            else COMPLETIONS_PATH,
            "servers": [b.state() for b in self.backends],
            # the first server's vLLM, probed at start (fleet_checks.probe_runtime); either layout is read
            "runtime": self.runtime,
        }

    async def shutdown(self) -> None:
        self._closed = True
        if self._resolving is not None:
            self._resolving.cancel()
        await self._connections.close(self.backends)


def read_logprobs(ids: list[int], positions: list[Any] | None, cached: int) -> list[float | None]:
    """Each prompt token's logprob from a JSON prompt_logprobs list (token ids as strings), None for
    the positions the server computed none for; either runner's layout
    (flip_reward/engines/prompt_logprobs.py). UnreadablePromptLogprobs where it cannot be aligned."""
    if positions is None:
        raise RemoteRequestError("the remote server does not return prompt_logprobs")
    return align_prompt_logprobs(ids, positions, cached, remote_logprob)
