"""Faults against a real server of its own (these tests kill it): a client that sends its body
slowly, clients that disconnect mid-request, the engine process killed under load, and an engine
process that hangs (stopped with SIGSTOP) under load.

Design under test: on an engine failure in-flight requests get 503 at once, /ready turns 503 and
the process exits with code 1 so that the orchestrator starts a fresh one (the recovery).
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx
import psutil
import pytest

from tests.integration.conftest import RunningServer, load_jsonl, served_500, start_server, stop_server

pytestmark = pytest.mark.integration

BODY_TIMEOUT_S = 3.0
STALL_S = 20.0  # above the longest engine step seen here (a batch of long prefills on 2 busy cores)
EXIT_GRACE_S = 1.0
FAIL_FAST_BOUND_S = 5.0  # engine killed -> every in-flight request has its 503
EXIT_BOUND_S = 60.0  # engine failure noticed -> the process has exited
FAULT_ARGS = [
    "--cpu-kv-cache-gib",
    "1",
    "--body-timeout-s",
    str(BODY_TIMEOUT_S),
    "--exit-grace-s",
    str(EXIT_GRACE_S),
    "--watchdog-interval-s",
    "0.25",
    "--engine-stall-s",
    str(STALL_S),
]


def _items(n: int) -> list[dict]:
    rows = load_jsonl("selfinstruct_reconstruction_64.jsonl")[:n]
    return [{"prompt": r["instruction"], "response": r["response"]} for r in rows]


def _engine_processes(server: RunningServer) -> list[psutil.Process]:
    return psutil.Process(server.process.pid).children(recursive=True)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _engine_core(server: RunningServer) -> psutil.Process:
    (core,) = [p for p in _engine_processes(server) if "EngineCore" in p.name()]
    return core


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory):
    running = start_server(tmp_path_factory.mktemp("faults"), FAULT_ARGS)
    yield running
    stop_server(running)


def _raw_request(url: str, head: str) -> socket.socket:
    parsed = urlparse(url)
    sock = socket.create_connection((parsed.hostname, parsed.port), timeout=30)
    sock.sendall(head.encode())
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _content_length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _content_length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_slow_body_is_cut_off_with_408(fault_server):
    body = json.dumps(_items(1)[0]).encode()
    sock = _raw_request(
        fault_server.url,
        f"POST /reward HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n",
    )
    started = time.monotonic()
    status = None
    try:
        for byte in body:  # one byte a second: would take minutes
            sock.sendall(bytes([byte]))
            sock.settimeout(1.0)
            try:
                status, payload = _read_response(sock)
                break
            except TimeoutError:
                continue
            except OSError:
                break
        else:
            pytest.fail("the whole slow body was accepted")
    finally:
        sock.close()
    waited = time.monotonic() - started
    assert status == 408, status
    assert "FLIP_BODY_TIMEOUT_S" in payload["error"]["message"]
    assert waited < BODY_TIMEOUT_S + 3
    with fault_server.client() as http:  # and the server is fine
        assert http.get("/ready").status_code == 200


def test_clients_that_disconnect_mid_request_leave_the_server_healthy(fault_server):
    long_item = {"prompt": "Summarise this text.", "response": "The quick brown fox jumps. " * 200}
    gave_up = 0
    for _ in range(6):
        with httpx.Client(base_url=fault_server.url, timeout=0.3) as quitter:
            try:
                quitter.post("/reward", json=long_item)
            except httpx.ReadTimeout:  # the client gives up and closes the connection
                gave_up += 1
    assert gave_up >= 3
    with fault_server.client() as http:
        response = http.post("/reward", json=_items(1)[0])
        assert response.status_code == 200 and response.json()["reward"] is not None
        # Every abandoned request finished or was dropped: nothing left in flight but this scrape.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            metrics = http.get("/metrics").text
            if "flip_requests_in_flight 1.0" in metrics:
                break
            time.sleep(0.5)
        assert "flip_requests_in_flight 1.0" in metrics
        assert not served_500(metrics)


@dataclass
class LoadRecord:
    sent_at: float
    answered_at: float | None = None
    status: int | None = None
    error_type: str | None = None
    transport_error: str | None = None
    item: int | None = None
    reward: float | None = None


@dataclass
class Load:
    """Client threads that post /reward until they get a non-200 (a trainer backs off on 503)."""

    url: str
    clients: int = 8
    records: list[LoadRecord] = field(default_factory=list)
    ok: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    def _client(self, index: int) -> None:
        items = _items(16)
        with httpx.Client(base_url=self.url, timeout=120) as http:
            n = 0
            while not self.stop.is_set():
                record = LoadRecord(sent_at=time.monotonic(), item=(index + n) % len(items))
                self.records.append(record)
                try:
                    response = http.post("/reward", json=items[record.item])
                except httpx.TransportError as exc:
                    record.transport_error = type(exc).__name__
                    return
                record.answered_at, record.status = time.monotonic(), response.status_code
                if response.status_code != 200:
                    record.error_type = response.json()["error"]["type"]
                    return
                record.reward = response.json()["reward"]
                self.ok.set()
                n += 1

    def start(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(self.clients)]
        for thread in threads:
            thread.start()
        return threads


def _watch_until_exit(server: RunningServer, since: float, bound_s: float) -> dict[str, float | None]:
    """Poll /ready and the process: when did /ready stop answering 200, when did the process exit."""
    not_ready_at = exited_at = None
    with httpx.Client(base_url=server.url, timeout=2) as http:
        while time.monotonic() - since < bound_s:
            if server.process.poll() is not None:
                exited_at = time.monotonic()
                break
            if not_ready_at is None:
                try:
                    if http.get("/ready").status_code == 503:
                        not_ready_at = time.monotonic()
                except httpx.TransportError:
                    pass
            time.sleep(0.05)
    return {"not_ready_at": not_ready_at, "exited_at": exited_at}


def _fault_under_load(server: RunningServer, inflict) -> dict:
    engine_processes = _engine_processes(server)
    load = Load(server.url)
    try:
        threads = load.start()
        assert load.ok.wait(180), "no request succeeded before the fault"
        time.sleep(1.0)  # let every client have a request in flight
        fault_at = time.monotonic()
        inflict(server)
        watched = _watch_until_exit(server, fault_at, STALL_S + EXIT_BOUND_S)
        load.stop.set()
        for thread in threads:
            thread.join(30)
        deadline = time.monotonic() + 10  # the service kills its engine processes on the way out
        while (leftovers := [p.pid for p in engine_processes if _alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        for process in engine_processes:  # never leave an engine behind, whatever happened
            try:
                process.kill()
            except psutil.Error:
                pass
        stop_server(server)
    # In flight: sent before the fault and not answered before it. Engine work that finished before
    # the kill can still reach its caller after it (the front end drains the outputs already sent):
    # such a 200 must carry the reward the same item got before the fault, never a made-up one.
    unanswered = [
        r for r in load.records if r.sent_at < fault_at and (r.answered_at is None or r.answered_at >= fault_at)
    ]
    before = {r.item: r.reward for r in load.records if r.status == 200 and r.answered_at < fault_at}
    late = [r for r in unanswered if r.status == 200]
    assert all(r.reward == pytest.approx(before[r.item], abs=1e-5) for r in late if r.item in before), [
        (r.item, r.reward, before.get(r.item)) for r in late
    ]
    in_flight = [r for r in unanswered if r.status != 200]
    first_503 = min((r.answered_at for r in load.records if r.status == 503), default=None)
    timeline = {
        "requests": len(load.records),
        "answered_200": sum(r.status == 200 for r in load.records),
        "answered_503": sum(r.status == 503 for r in load.records),
        "in_flight_at_fault": len(in_flight),
        "to_first_503_s": None if first_503 is None else round(first_503 - fault_at, 3),
        "to_last_in_flight_503_s": round(max(r.answered_at or float("inf") for r in in_flight) - fault_at, 3)
        if in_flight
        else None,
        "to_not_ready_s": None if watched["not_ready_at"] is None else round(watched["not_ready_at"] - fault_at, 3),
        "to_exit_s": None if watched["exited_at"] is None else round(watched["exited_at"] - fault_at, 3),
        "exit_code": server.process.returncode,
    }
    print("\nfault timeline:", json.dumps(timeline))
    # Every request was answered: no transport errors, no 5xx but 503, no request lost.
    assert not [r for r in load.records if r.transport_error], [r for r in load.records if r.transport_error]
    assert {r.status for r in load.records} <= {200, 503, 429}
    assert in_flight, "the fault hit an idle server"
    assert all(r.status == 503 for r in in_flight), [(r.status, r.error_type) for r in in_flight]
    assert timeline["exit_code"] == 1, server.log_path.read_text()[-3000:]
    assert timeline["to_not_ready_s"] is not None or timeline["to_exit_s"] is not None
    assert not leftovers, f"engine processes left behind: {leftovers}"
    return timeline


def test_engine_killed_under_load(fault_server):
    timeline = _fault_under_load(fault_server, lambda server: _engine_core(server).kill())
    assert timeline["to_last_in_flight_503_s"] <= FAIL_FAST_BOUND_S
    assert timeline["to_exit_s"] is not None and timeline["to_exit_s"] <= EXIT_BOUND_S


def test_hung_engine_is_caught_by_the_watchdog(tmp_path):
    def hang(server: RunningServer) -> None:
        for process in _engine_processes(server):
            process.send_signal(signal.SIGSTOP)  # alive but making no progress

    timeline = _fault_under_load(start_server(tmp_path, FAULT_ARGS), hang)
    # The watchdog's stall limit, one check interval and some slack on a busy machine.
    assert timeline["to_last_in_flight_503_s"] <= STALL_S + FAIL_FAST_BOUND_S
    assert timeline["to_exit_s"] is not None and timeline["to_exit_s"] <= STALL_S + EXIT_BOUND_S
