"""The SIGTERM drain (flip_reward/server.py) with real uvicorn, real signals and a real process, over a
slow test-double engine: in-flight requests finish, new ones get 503, the process exits within
the grace, and the engine is shut down last. The same with the real engine in
tests/integration/test_remote_engine.py."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.net import free_port

ROOT = Path(__file__).resolve().parents[2]

SERVER = textwrap.dedent(
    """
    import asyncio, logging, sys
    from flip_reward.config import Settings
    from flip_reward.main import create_app
    from flip_reward.server import serve
    from flip_reward.service import FlipService
    from tests.fakes import FakeEngine, HashEmbedder

    class SlowEngine(FakeEngine):
        async def generate(self, prompt_token_ids, params):
            await asyncio.sleep(float(sys.argv[2]))
            return await super().generate(prompt_token_ids, params)

        async def shutdown(self):
            print("ENGINE SHUT DOWN", flush=True)

    logging.basicConfig(level=logging.INFO)
    settings = Settings(port=int(sys.argv[1]), shutdown_grace_s=float(sys.argv[3]), max_tokens=32, method="generate")
    service = FlipService(settings, engine_factory=lambda s: SlowEngine(), embedder_factory=lambda s: HashEmbedder())
    serve(create_app(settings, service), settings)
    """
)
ITEM = {"prompt": "Explain why the sky is blue", "response": "why the sky is blue: Rayleigh scattering"}


def start(tmp_path: Path, engine_delay_s: float, grace_s: float) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log = tmp_path / "server.log"
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port), str(engine_delay_s), str(grace_s)],
        cwd=ROOT,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return process, url, log
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError(f"test server did not start:\n{log.read_text()}")


def send_in_background(url: str, answers: list) -> threading.Thread:
    def post() -> None:
        try:
            answers.append(httpx.post(url + "/reward", json=ITEM, timeout=60))
        except httpx.HTTPError as exc:
            answers.append(exc)

    thread = threading.Thread(target=post)
    thread.start()
    return thread


def wait_in_flight(url: str, count: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in httpx.get(url + "/metrics").text.splitlines():
            if line.startswith("flip_requests_in_flight ") and float(line.split()[1]) >= count + 1:
                return
        time.sleep(0.02)
    raise AssertionError("requests never got in flight")


def settle() -> None:
    """The in-flight gauge counts a request from the middleware on; give it time to pass admission."""
    time.sleep(0.5)


def test_sigterm_finishes_in_flight_refuses_new_and_exits(tmp_path):
    process, url, log = start(tmp_path, engine_delay_s=2.0, grace_s=30)
    try:
        answers: list = []
        senders = [send_in_background(url, answers) for _ in range(3)]
        wait_in_flight(url, 3)
        settle()
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        ready = httpx.get(url + "/ready")
        refused = httpx.post(url + "/reward", json=ITEM)
        assert ready.status_code == 503 and ready.json()["reason"] == "service is stopping"
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "not_ready"

        process.wait(timeout=30)
        exited_after = time.monotonic() - signalled
        for sender in senders:
            sender.join()
        assert [a.status_code for a in answers] == [200, 200, 200], answers
        assert all(a.json()["reward"] is not None for a in answers)
        assert exited_after < 10, "should exit once drained, not wait for the whole grace"
        output = log.read_text()
        assert output.index("drained: no request in flight") < output.index("ENGINE SHUT DOWN")
    finally:
        process.kill()


def test_requests_still_running_after_the_grace_are_cancelled(tmp_path):
    grace_s = 1.0
    process, url, log = start(tmp_path, engine_delay_s=60.0, grace_s=grace_s)
    try:
        answers: list = []
        sender = send_in_background(url, answers)
        wait_in_flight(url, 1)
        settle()
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        process.wait(timeout=30)
        exited_after = time.monotonic() - signalled
        sender.join()
        # grace, then uvicorn's short final wait (flip_reward/server.py), then the exit itself
        assert exited_after < grace_s + 5
        (answer,) = answers
        assert isinstance(answer, httpx.HTTPError) or answer.status_code >= 500
        output = log.read_text()
        assert "shutdown grace of 1 s is over; cancelling 1 request(s)" in output
        assert "ENGINE SHUT DOWN" in output
    finally:
        process.kill()


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_stops_the_drain(tmp_path, second):
    process, url, _ = start(tmp_path, engine_delay_s=60.0, grace_s=120)
    try:
        answers: list = []
        sender = send_in_background(url, answers)
        wait_in_flight(url, 1)
        settle()
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert process.poll() is None, "the first signal only starts the drain"
        process.send_signal(second)
        process.wait(timeout=15)
        sender.join()
    finally:
        process.kill()
