"""Queue bound (429), deadlines (504) and client disconnects, through the ASGI app with the test
double engine made slow. The same paths run against the real engine in
tests/integration/test_throughput.py."""

import asyncio
import json

import httpx
import pytest
from prometheus_client import REGISTRY

from app.config import Settings
from app.main import create_app
from app.service import FlipService
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
