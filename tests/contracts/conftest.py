"""A live HTTP service for the trainer contract tests: the real app and serving path over a real
socket, with the test-double engine (the same contracts run against the real engine in
tests/integration/test_trainers.py). The trainers' own client code (aiohttp, httpx) talks to it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from flip_reward.config import Settings
from flip_reward.main import create_app
from flip_reward.service import FlipService
from tests.fakes import FakeEngine, HashEmbedder
from tests.net import ThreadServer

INSTRUCTION = "Explain why the sky is blue"
# A GRPO group: one prompt, 8 completions, including an EOS-only one and one cut off inside <think>.
GROUP = [
    "Sunlight scatters off air molecules; blue light scatters most, so the sky looks blue.",
    "Rayleigh scattering: short wavelengths scatter more, which is why we see blue.",
    "<think>air molecules, wavelengths</think>Because blue light is scattered the most by air.",
    "",  # EOS only: the decoded response is empty
    "<think>Let me think about scattering and the wavelengths of",  # cut off inside <think>
    "Blue light bounces around the air more than red light does.",
    "I like turtles and bananas.",
    "Explain why the sky is blue. Explain why the sky is blue.",  # nothing but copies
]
UNSCORABLE = {3: "empty_response", 4: "think_only", 7: "all_copied"}


class Live:
    def __init__(self, url: str, service: FlipService, engine: FakeEngine) -> None:
        self.url, self.service, self.engine = url, service, engine


@pytest.fixture(scope="session")
def live(tmp_path_factory):
    # The watchdog never ticks here: a test that makes the engine unhealthy for a moment must not
    # have it declared dead (the service would stay down for every later test of the session).
    settings = Settings(
        cache_dir=tmp_path_factory.mktemp("live"),
        max_tokens=32,
        method="likelihood",
        log_format="text",
        watchdog_interval_s=3600,
    )
    engine = FakeEngine()
    service = FlipService(settings, engine_factory=lambda s: engine, embedder_factory=lambda s: HashEmbedder())
    server = ThreadServer(create_app(settings, service), start_timeout_s=20)
    deadline = time.monotonic() + 20
    while not service.ready:
        assert time.monotonic() < deadline, "the contract-test service did not start"
        time.sleep(0.02)
    yield Live(server.url, service, engine)
    server.close()


def batch_rewards(live: Live, items: list[dict]) -> list[float]:
    import httpx

    body = httpx.post(live.url + "/batch_reward", json={"items": items}, timeout=30).json()
    return body["rewards"]


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="session")
def unavailable_url():
    """A service that answers every request with 503 and Retry-After (an engine that died, the
    models still loading), in the service's error shape: the failure path of an adapter, without
    failing the live service's engine (its watchdog would end the session's service)."""
    import http.server
    import json

    class Unavailable(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length") or 0))
            body = json.dumps({"error": {"type": "engine_error", "message": "the engine failed"}}).encode()
            self.send_response(503)
            self.send_header("content-type", "application/json")
            self.send_header("retry-after", "0")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
