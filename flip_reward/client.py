"""Python client for the flip-reward service, sync (`FlipClient`) and async (`AsyncFlipClient`).

- One base URL or several replicas: chunks go to the replicas in turn, and a retry moves on to
  the next replica.
- Retries with exponential backoff and jitter on connection errors and timeouts, 429 (waiting
  at least its `Retry-After`), 502, 503 and 504. Any other 4xx is the caller's mistake: it is
  raised at once and never retried (nor turned into `None`).
- Large batches are split into chunks that run concurrently; results keep the input order.
- When a chunk still fails after the last retry, it raises `FlipRequestError`, or, with
  `on_failure="none"`, gives `None` for each sample of that chunk.

An item is a dict as /batch_reward takes it: `{"prompt" | "messages", "response", "id"?}`.
A result is the service's per-item result dict (`reward` is None when the service could not
score that item; its `error` says why).

This module needs only httpx, so trainers can import it without the server's dependencies.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import httpx

OnFailure = Literal["raise", "none"]

RETRY_STATUSES = frozenset({429, 502, 503, 504})


class FlipRequestError(RuntimeError):
    """A request to the service failed for good (after retries, or at once for a 4xx)."""

    def __init__(self, message: str, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


@dataclass(frozen=True)
class RetryPolicy:
    """Delay before retry n (0-based): base * 2**n, capped at `max_delay`, then jittered into
    [d/2, d] so that many clients that failed together do not come back together. A
    `Retry-After` from the server sets a floor (capped at `max_retry_after`)."""

    max_retries: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 120.0

    def delay(self, retry: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        capped = min(self.max_delay, self.base_delay * (2**retry))
        jittered = capped / 2 + (rng or random).uniform(0, capped / 2)
        if retry_after is not None:
            return max(jittered, min(retry_after, self.max_retry_after))
        return jittered


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def chunked(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error") or {}
        return error.get("message") or response.text[:300]
    except (ValueError, AttributeError):
        return response.text[:300]


class _Outcome:
    """What one attempt came to: a JSON body, or a failure that may be retried."""

    def __init__(
        self,
        body: Any = None,
        error: str | None = None,
        status: int | None = None,
        retry: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.body, self.error, self.status, self.retry, self.retry_after = body, error, status, retry, retry_after


def _outcome_of(response: httpx.Response) -> _Outcome:
    if response.status_code < 400:
        return _Outcome(body=response.json())
    message = f"HTTP {response.status_code} from {response.request.url}: {_error_message(response)}"
    retry = response.status_code in RETRY_STATUSES
    retry_after = parse_retry_after(response.headers.get("retry-after")) if retry else None
    return _Outcome(error=message, status=response.status_code, retry=retry, retry_after=retry_after)


def _outcome_of_exception(exc: httpx.TransportError, url: str) -> _Outcome:
    # Connection refused/reset, DNS, timeouts: the replica may come back or another may answer.
    return _Outcome(error=f"{type(exc).__name__} on {url}: {exc}", retry=True)


class _Base:
    def __init__(
        self,
        base_url: str | Sequence[str] = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 300.0,
        retry: RetryPolicy | None = None,
        chunk_size: int = 64,
        max_concurrency: int = 8,
        on_failure: OnFailure = "raise",
        similarity: str | None = None,
        transport: Any = None,
    ) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ValueError("base_url: give at least one URL")
        if chunk_size < 1 or max_concurrency < 1:
            raise ValueError("chunk_size and max_concurrency must be at least 1")
        if on_failure not in ("raise", "none"):
            raise ValueError("on_failure must be 'raise' or 'none'")
        self.base_urls = [u.rstrip("/") for u in urls]
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.chunk_size = chunk_size
        self.max_concurrency = max_concurrency
        self.on_failure = on_failure
        self.similarity = similarity
        self._transport = transport
        self._next_replica = itertools.count()
        self._replica_lock = threading.Lock()

    def _start_replica(self) -> int:
        with self._replica_lock:  # round-robin over the replicas, shared by every chunk
            return next(self._next_replica) % len(self.base_urls)

    def _batch_body(
        self, items: Sequence[dict], similarity: str | None, details: bool, options: dict | None = None
    ) -> dict:
        """`options`: other /batch_reward options, e.g. {"method": "likelihood", "prompt_mode": "direct"}."""
        body: dict[str, Any] = {"items": list(items), "details": details, **(options or {})}
        if similarity or self.similarity:
            body["similarity"] = similarity or self.similarity
        return body

    def _failed(self, outcome: _Outcome, attempts: int) -> FlipRequestError:
        return FlipRequestError(
            f"{outcome.error} (after {attempts} attempt{'s' * (attempts > 1)})", outcome.status, attempts
        )

    def _none_instead(self, exc: FlipRequestError) -> bool:
        """on_failure='none' covers failures of the service (transport, 429, 5xx), never a 4xx
        that says the request itself is wrong."""
        return self.on_failure == "none" and (exc.status is None or exc.status == 429 or exc.status >= 500)


class FlipClient(_Base):
    """Blocking client; chunks run concurrently on a small thread pool."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._http = httpx.Client(timeout=self.timeout, headers=self.headers, transport=self._transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FlipClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _post(self, path: str, body: dict) -> dict:
        """POST with retries across replicas; raises FlipRequestError when it gives up."""
        replica = self._start_replica()
        for attempt in range(self.retry.max_retries + 1):
            url = self.base_urls[(replica + attempt) % len(self.base_urls)] + path
            try:
                outcome = _outcome_of(self._http.post(url, json=body))
            except httpx.TransportError as exc:
                outcome = _outcome_of_exception(exc, url)
            if outcome.error is None:
                return outcome.body
            if not outcome.retry or attempt == self.retry.max_retries:
                raise self._failed(outcome, attempt + 1)
            time.sleep(self.retry.delay(attempt, outcome.retry_after))
        raise AssertionError("unreachable")

    def _chunk(
        self, items: Sequence[dict], similarity: str | None, details: bool, options: dict | None = None
    ) -> list[dict | None]:
        try:
            return self._post("/batch_reward", self._batch_body(items, similarity, details, options))["results"]
        except FlipRequestError as exc:
            if self._none_instead(exc):
                return [None] * len(items)
            raise

    def score(
        self, items: Sequence[dict], similarity: str | None = None, details: bool = False, options: dict | None = None
    ) -> list[dict | None]:
        """One result dict per item, in input order (None for items of a chunk that failed,
        with on_failure='none')."""
        chunks = chunked(items, self.chunk_size)
        if len(chunks) <= 1:
            return self._chunk(items, similarity, details, options) if items else []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(chunks))) as pool:
            parts = list(pool.map(lambda c: self._chunk(c, similarity, details, options), chunks))
        return [result for part in parts for result in part]

    def rewards(self, items: Sequence[dict], similarity: str | None = None) -> list[float | None]:
        return [r["reward"] if r else None for r in self.score(items, similarity)]

    def reward(self, prompt: str, response: str, similarity: str | None = None) -> float | None:
        (value,) = self.rewards([{"prompt": prompt, "response": response}], similarity)
        return value

    def rank(self, prompt: str, responses: Sequence[str], similarity: str | None = None) -> dict:
        """POST /rank: per-response rewards, the ranking (best first) and the best index."""
        body: dict[str, Any] = {"prompt": prompt, "responses": list(responses)}
        if similarity or self.similarity:
            body["similarity"] = similarity or self.similarity
        return self._post("/rank", body)

    def ready(self) -> bool:
        try:
            return all(self._http.get(u + "/ready").status_code == 200 for u in self.base_urls)
        except httpx.TransportError:
            return False


class AsyncFlipClient(_Base):
    """asyncio client; chunks run concurrently (at most `max_concurrency` at a time).

    The underlying httpx.AsyncClient belongs to one event loop; when called from another loop
    (a trainer that runs each step in a fresh loop), a new one is made for it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop:
            self._http = httpx.AsyncClient(timeout=self.timeout, headers=self.headers, transport=self._transport)
            self._loop = loop
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> AsyncFlipClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _post(self, path: str, body: dict) -> dict:
        replica = self._start_replica()
        http = self._client()
        for attempt in range(self.retry.max_retries + 1):
            url = self.base_urls[(replica + attempt) % len(self.base_urls)] + path
            try:
                outcome = _outcome_of(await http.post(url, json=body))
            except httpx.TransportError as exc:
                outcome = _outcome_of_exception(exc, url)
            if outcome.error is None:
                return outcome.body
            if not outcome.retry or attempt == self.retry.max_retries:
                raise self._failed(outcome, attempt + 1)
            await asyncio.sleep(self.retry.delay(attempt, outcome.retry_after))
        raise AssertionError("unreachable")

    async def _chunk(
        self,
        items: Sequence[dict],
        similarity: str | None,
        details: bool,
        gate: asyncio.Semaphore,
        options: dict | None = None,
    ) -> list[dict | None]:
        async with gate:
            try:
                body = self._batch_body(items, similarity, details, options)
                return (await self._post("/batch_reward", body))["results"]
            except FlipRequestError as exc:
                if self._none_instead(exc):
                    return [None] * len(items)
                raise

    async def score(
        self, items: Sequence[dict], similarity: str | None = None, details: bool = False, options: dict | None = None
    ) -> list[dict | None]:
        if not items:
            return []
        gate = asyncio.Semaphore(self.max_concurrency)
        parts = await asyncio.gather(
            *(self._chunk(c, similarity, details, gate, options) for c in chunked(items, self.chunk_size))
        )
        return [result for part in parts for result in part]

    async def rewards(self, items: Sequence[dict], similarity: str | None = None) -> list[float | None]:
        return [r["reward"] if r else None for r in await self.score(items, similarity)]

    async def reward(self, prompt: str, response: str, similarity: str | None = None) -> float | None:
        (value,) = await self.rewards([{"prompt": prompt, "response": response}], similarity)
        return value

    async def rank(self, prompt: str, responses: Sequence[str], similarity: str | None = None) -> dict:
        body: dict[str, Any] = {"prompt": prompt, "responses": list(responses)}
        if similarity or self.similarity:
            body["similarity"] = similarity or self.similarity
        return await self._post("/rank", body)
