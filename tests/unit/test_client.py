"""The client against real loopback HTTP servers that fail on purpose: retries, backoff,
Retry-After, replicas, chunking, order, failure modes. Sync and async clients alike."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from email.utils import formatdate

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from flip_reward.client import AsyncFlipClient, FlipClient, FlipRequestError, RetryPolicy, parse_retry_after
from tests.net import ThreadServer, free_port

FAST = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05)


class FlakyService:
    """A /batch_reward that answers from a script: each request takes the next planned failure
    (status, headers); once the plan is used up it answers normally. Items whose response is
    'always-503' make their request fail every time. reward = float(response)."""

    def __init__(self) -> None:
        self.plan: list[tuple[int, dict]] = []
        self.requests: list[dict] = []
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.app = FastAPI()
        self.app.post("/batch_reward")(self.batch_reward)
        self.app.post("/rank")(self.rank)

    def reset(self) -> None:
        self.plan, self.requests, self.delay, self.max_in_flight = [], [], 0.0, 0

    async def batch_reward(self, request: Request) -> JSONResponse:
        body = await request.json()
        with self.lock:
            self.requests.append(
                {
                    "t": time.monotonic(),
                    "auth": request.headers.get("authorization"),
                    "responses": [i["response"] for i in body["items"]],
                }
            )
            planned = self.plan.pop(0) if self.plan else None
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if any(i["response"] == "always-503" for i in body["items"]):
                planned = (503, {})
            if planned:
                status, headers = planned
                return JSONResponse({"error": {"type": "x", "message": f"planned {status}"}}, status, headers)
            results = [{"id": i.get("id"), "reward": float(i["response"]), "error": None} for i in body["items"]]
            return JSONResponse({"rewards": [r["reward"] for r in results], "results": results})
        finally:
            with self.lock:
                self.in_flight -= 1

    async def rank(self, request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"best_index": 0, "rewards": [1.0] * len(body["responses"])})


@pytest.fixture(scope="module")
def services():
    flaky_services, servers = [FlakyService(), FlakyService()], []
    for service in flaky_services:
        server = ThreadServer(service.app)
        service.url = server.url
        servers.append(server)
    yield flaky_services
    for server in servers:
        server.close()


@pytest.fixture
def flaky(services):
    for service in services:
        service.reset()
    return services[0]


@pytest.fixture(params=["sync", "async"])
def score(request):
    """score(client_kwargs, items) with the sync or the async client."""

    def run(items, url, **kwargs):
        if request.param == "sync":
            with FlipClient(url, **kwargs) as client:
                return client.score(items)

        async def go():
            async with AsyncFlipClient(url, **kwargs) as client:
                return await client.score(items)

        return asyncio.run(go())

    return run


def items_of(*values) -> list[dict]:
    return [{"prompt": "p", "response": str(v)} for v in values]


def rewards_of(results) -> list:
    return [r["reward"] if r else None for r in results]


def test_retries_503_then_succeeds(flaky, score):
    flaky.plan = [(503, {}), (503, {})]
    assert rewards_of(score(items_of(0.5), flaky.url, retry=FAST)) == [0.5]
    assert len(flaky.requests) == 3


def test_honours_retry_after_on_429(flaky, score):
    flaky.plan = [(429, {"Retry-After": "1"})]
    assert rewards_of(score(items_of(0.25), flaky.url, retry=FAST)) == [0.25]
    first, second = flaky.requests
    assert second["t"] - first["t"] >= 1.0  # the backoff alone would be ~0.01 s


def test_backoff_grows_exponentially(flaky, score):
    flaky.plan = [(503, {})] * 3
    policy = RetryPolicy(max_retries=3, base_delay=0.1, max_delay=10)
    score(items_of(1), flaky.url, retry=policy)
    times = [r["t"] for r in flaky.requests]
    gaps = [b - a for a, b in zip(times, times[1:])]
    for n, gap in enumerate(gaps):  # jittered into [d/2, d] with d = 0.1 * 2**n
        assert 0.1 * 2**n / 2 - 0.01 <= gap <= 0.1 * 2**n + 0.15


@pytest.mark.parametrize("status", [400, 401, 404, 413, 422])
@pytest.mark.parametrize("on_failure", ["raise", "none"])
def test_other_4xx_fail_at_once(flaky, score, status, on_failure):
    flaky.plan = [(status, {})]
    with pytest.raises(FlipRequestError) as failure:
        score(items_of(1), flaky.url, retry=FAST, on_failure=on_failure)
    assert failure.value.status == status and failure.value.attempts == 1
    assert "planned" in str(failure.value)
    assert len(flaky.requests) == 1


def test_gives_up_after_last_retry(flaky, score):
    flaky.plan = [(503, {})] * 10
    with pytest.raises(FlipRequestError) as failure:
        score(items_of(1), flaky.url, retry=FAST)
    assert failure.value.status == 503 and failure.value.attempts == FAST.max_retries + 1
    assert len(flaky.requests) == FAST.max_retries + 1


def test_none_for_the_samples_of_a_chunk_that_failed(flaky, score):
    items = items_of(0.1, 0.2, "always-503", 0.4, 0.5)
    results = score(items, flaky.url, retry=FAST, chunk_size=2, on_failure="none")
    assert rewards_of(results) == [0.1, 0.2, None, None, 0.5]  # chunk [always-503, 0.4] failed


def test_chunks_run_concurrently_and_keep_order(flaky, score):
    flaky.delay = 0.2
    values = [i / 100 for i in range(23)]
    results = score(items_of(*values), flaky.url, chunk_size=4, max_concurrency=3)
    assert rewards_of(results) == values
    assert sorted(len(r["responses"]) for r in flaky.requests) == [3, 4, 4, 4, 4, 4]
    assert flaky.max_in_flight == 3


def test_replicas_share_the_load(services, score):
    for service in services:
        service.reset()
    results = score(items_of(*range(8)), [s.url for s in services], chunk_size=2)
    assert rewards_of(results) == [float(v) for v in range(8)]
    assert [len(s.requests) for s in services] == [2, 2]


def test_dead_replica_is_skipped(flaky, score):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    results = score(items_of(*range(6)), [dead, flaky.url], chunk_size=1, retry=FAST)
    assert rewards_of(results) == [float(v) for v in range(6)]
    assert len(flaky.requests) == 6


def test_connection_errors_retry_then_fail_or_none(score):
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(FlipRequestError) as failure:
        score(items_of(1), dead, retry=FAST)
    assert failure.value.status is None and failure.value.attempts == FAST.max_retries + 1
    assert "ConnectError" in str(failure.value)
    assert score(items_of(1, 2), dead, retry=FAST, on_failure="none") == [None, None]


def test_api_key_is_sent_as_bearer_token(flaky, score):
    score(items_of(1), flaky.url, api_key="s3cret")
    assert flaky.requests[0]["auth"] == "Bearer s3cret"


def test_sync_helpers(flaky):
    with FlipClient(flaky.url) as client:
        assert client.reward("p", "0.75") == 0.75
        assert client.rewards([]) == []
        assert client.rank("p", ["a", "b"])["best_index"] == 0


def test_async_client_survives_a_new_event_loop(flaky):
    client = AsyncFlipClient(flaky.url)
    assert asyncio.run(client.rewards(items_of(0.5))) == [0.5]
    assert asyncio.run(client.rewards(items_of(0.25))) == [0.25]  # a trainer step in a fresh loop


def test_mock_transport_timeout_is_retried():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(200, json={"results": [{"reward": 0.5}]})

    with FlipClient("http://flip.test", retry=FAST, transport=httpx.MockTransport(handler)) as client:
        assert client.rewards(items_of(0)) == [0.5]
    assert len(calls) == 2


def test_retry_policy_and_retry_after_parsing():
    policy = RetryPolicy(base_delay=1, max_delay=8)
    rng = random.Random(0)
    for n, cap in enumerate([1, 2, 4, 8, 8]):
        assert cap / 2 <= policy.delay(n, rng=rng) <= cap
    assert policy.delay(0, retry_after=5, rng=rng) >= 5
    assert RetryPolicy(max_retry_after=3).delay(0, retry_after=500) == 3
    assert parse_retry_after("7") == 7
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = time.time()
    assert 9 <= parse_retry_after(formatdate(now + 10, usegmt=True), now=now) <= 10.5
