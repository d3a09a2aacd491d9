"""A live HTTP service for the trainer contract tests: the real app and serving path over a real
socket, with the test-double engine (the same contracts run against the real engine in
tests/integration/test_trainers.py). The trainers' own client code (aiohttp, httpx) talks to it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import uvicorn

from app.config import Settings
from app.main import create_app
from app.service import FlipService
from tests.fakes import FakeEngine, HashEmbedder

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Live:
    def __init__(self, url: str, service: FlipService, engine: FakeEngine) -> None:
        self.url, self.service, self.engine = url, service, engine


@pytest.fixture(scope="session")
def live(tmp_path_factory):
    settings = Settings(
        cache_dir=tmp_path_factory.mktemp("live"), max_tokens=32, method="likelihood", log_format="text"
    )
    engine = FakeEngine()
    service = FlipService(settings, engine_factory=lambda s: engine, embedder_factory=lambda s: HashEmbedder())
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, service), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not (server.started and service.ready):
        assert time.monotonic() < deadline, "the contract-test service did not start"
        time.sleep(0.02)
    yield Live(f"http://127.0.0.1:{port}", service, engine)
    server.should_exit = True
    thread.join(timeout=10)


def batch_rewards(live: Live, items: list[dict]) -> list[float]:
    import httpx

    body = httpx.post(live.url + "/batch_reward", json={"items": items}, timeout=30).json()
    return body["rewards"]


def run(coro):
    return asyncio.run(coro)
