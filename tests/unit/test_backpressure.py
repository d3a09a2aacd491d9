"""Queue bound (429), deadlines (504) and client disconnects, through the ASGI app with the test
double engine made slow. The same paths run against the real engine in
tests/integration/test_throughput.py."""

import asyncio
import json

import httpx
import pytest
from prometheus_client import REGISTRY

from flip_reward.batching import Admission
from flip_reward.config import Settings
from flip_reward.main import create_app
from flip_reward.service import FlipService
from tests.fakes import FakeEngine, HashEmbedder

ITEM = {"prompt": "Explain why the sky is blue", "response": "why the sky is blue: Rayleigh scattering"}


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@pytest.fixture
async def slow_app(tmp_path):
    engine = FakeEngine()
    engine.delay_s = 0.3
    settings = Settings(
        cache_dir=tmp_path,
        max_queued_items=4,
        max_batch_items=8,
        max_tokens=32,
        request_timeout_s=5,
        max_request_timeout_s=10,
        method="generate",
    )
    service = FlipService(settings, engine_factory=lambda s: engine, embedder_factory=lambda s: HashEmbedder())
    await service.load()
    app = create_app(settings, service)
    yield app, engine, service


def client_for(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=30)


async def test_past_the_queue_bound_requests_get_429_with_retry_after(slow_app):
    app, engine, service = slow_app
    rejected_before = metric("flip_rejected_total")
    async with client_for(app) as client:
        responses = await asyncio.gather(*(client.post("/reward", json=ITEM) for _ in range(10)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) >= 4 and statuses.count(429) >= 1 and set(statuses) <= {200, 429}
    busy = next(r for r in responses if r.status_code == 429)
    assert busy.headers["Retry-After"] == "1" and busy.json()["error"]["type"] == "queue_full"
    assert metric("flip_rejected_total") - rejected_before == statuses.count(429)
    assert service.admission.queued == 0 and metric("flip_queue_depth") == 0


async def test_a_batch_larger_than_the_queue_bound_is_413(slow_app):
    app, _, _ = slow_app
    async with client_for(app) as client:
        response = await client.post("/batch_reward", json={"items": [ITEM] * 5})
    assert response.status_code == 413 and response.json()["error"]["field"] == "items"


async def test_past_the_deadline_504_and_the_engine_work_is_cancelled(slow_app):
    app, engine, service = slow_app
    engine.delay_s = 3.0
    timeouts_before = metric("flip_timeouts_total")
    async with client_for(app) as client:
        response = await client.post("/batch_reward", json={"items": [ITEM] * 3, "timeout_s": 0.2})
        assert response.status_code == 504 and response.json()["error"]["type"] == "timeout"
        assert engine.running == 0  # cancelled, not left running for 3 s
        assert metric("flip_timeouts_total") - timeouts_before == 1
        too_long = await client.post("/reward", json={**ITEM, "timeout_s": 11})
        assert too_long.status_code == 422 and too_long.json()["error"]["field"] == "timeout_s"
    assert service.admission.queued == 0


async def test_a_client_that_disconnects_has_its_engine_work_cancelled(slow_app):
    app, engine, service = slow_app
    engine.delay_s = 5.0
    aborts_before = metric("flip_aborts_total")
    body = json.dumps({"items": [ITEM] * 3}).encode()
    client_gone = asyncio.Event()
    sent = []

    async def receive():
        if not sent:
            sent.append(True)
            return {"type": "http.request", "body": body, "more_body": False}
        await client_gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/batch_reward",
        "raw_path": b"/batch_reward",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    handler = asyncio.create_task(app(scope, receive, send))
    for _ in range(100):
        if engine.running:
            break
        await asyncio.sleep(0.01)
    assert engine.running == 3
    client_gone.set()
    await asyncio.wait_for(handler, 2)  # returns long before the 5 s the engine would take
    assert engine.running == 0
    assert metric("flip_aborts_total") - aborts_before == 1
    assert service.admission.queued == 0


async def test_waiting_work_that_can_no_longer_finish_is_shed_with_429_before_it_starts(slow_app):
    app, engine, service = slow_app
    engine.delay_s = 1.0
    now = [0.0]
    admission = Admission(service.admission.limit, clock=lambda: now[0])
    with admission.admit(4):  # measured: 4 items in 4 busy seconds, 1 item/s
        now[0] += 4.0
    service.admission = admission
    async with client_for(app) as client:
        first = asyncio.create_task(client.post("/batch_reward", json={"items": [ITEM] * 3, "timeout_s": 5}))
        while admission.started == 0:  # noqa: ASYNC110  # polls the admission's state, which has no event
            await asyncio.sleep(0.01)
        # 4 items at 1/s fit its 5 s, but started work may take only a quarter of that: it waits
        second = asyncio.create_task(client.post("/reward", json={**ITEM, "timeout_s": 5}))
        while not admission.waiting:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        now[0] += 4.0  # the 3 started are overdue (3 s at 1/s): at 0.75/s the 4 need 5.3 s of the 1 s left
        shed = await second
        assert shed.status_code == 429 and shed.json()["error"]["type"] == "shed"
        assert int(shed.headers["Retry-After"]) >= 1
        assert (await first).status_code == 200  # started work finishes
    assert admission.queued == 0 and admission.started == 0
