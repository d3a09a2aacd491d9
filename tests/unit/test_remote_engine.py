"""Remote engine logic against scripted HTTP answers (httpx.MockTransport): what is sent, balancing
across URLs (least outstanding, prefix affinity), retries, cool-downs, connection renewal, the
watchdog's verdict, the start-up checks and error mapping. The real servers are in
tests/integration/test_remote_engine.py."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from prometheus_client import REGISTRY

from flip_reward.config import Settings
from flip_reward.engines import openai_remote
from flip_reward.engines.base import EngineUnavailable, GenerationParams
from flip_reward.engines.fleet import prefix_block_hashes
from flip_reward.engines.fleet_checks import (
    FleetMismatch,
    check_tokenizer,
    choose_model,
    discover_models,
    probe_runtime,
)
from flip_reward.engines.openai_remote import RemoteEngine, RemoteRequestError
from flip_reward.engines.prompt_logprobs import UnreadablePromptLogprobs
from flip_reward.engines.watchdog import watch
from tests.fakes import WordTokenizer


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(openai_remote, "_BACKOFF_BASE_S", 0.0)


def completion(text: str = "Explain X", prompt_tokens: int = 3, completion_tokens: int = 2) -> dict:
    return {
        "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }


class Script:
    """Answers each request with the next scripted response (or exception) for its host."""

    def __init__(self, answers: dict[str, list]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[request.url.host].pop(0)
        if isinstance(answer, Exception):
            raise answer
        status, body = answer
        return httpx.Response(status, json=body)

    @property
    def hosts(self) -> list[str]:
        return [r.url.host for r in self.requests]


def engine(script, urls=("http://a", "http://b"), retries: int = 2, concurrency: int = 4, **kw) -> RemoteEngine:
    return RemoteEngine(
        list(urls),
        "m",
        tokenizer=None,
        max_model_len=2048,
        max_concurrency=concurrency,
        retries=retries,
        transport=httpx.MockTransport(script),
        **kw,
    )


PARAMS = GenerationParams(max_tokens=16)


def _sample(name: str, url: str) -> float | None:
    """The value /metrics shows for one server."""
    return REGISTRY.get_sample_value(name, {"url": url})


async def test_sends_token_ids_greedy_with_neutral_sampling():
    script = Script({"a": [(200, completion("Explain rain", 5, 3))]})
    gen = await engine(script, urls=["http://a"]).generate([1, 2, 3, 4, 5], PARAMS)
    sent = json.loads(script.requests[0].content)
    assert script.requests[0].url.path == "/v1/completions"
    assert sent["prompt"] == [1, 2, 3, 4, 5] and sent["model"] == "m"
    assert sent["temperature"] == 0.0 and sent["max_tokens"] == 16 and "seed" not in sent
    assert sent["repetition_penalty"] == 1.0 and sent["top_p"] == 1.0
    assert "structured_outputs" not in sent and "authorization" not in script.requests[0].headers
    assert (gen.text, gen.prompt_tokens, gen.completion_tokens, gen.finish_reason) == ("Explain rain", 5, 3, "stop")


async def test_structured_output_regex_and_api_key_are_forwarded():
    script = Script({"a": [(200, completion())]})
    remote = engine(script, urls=["http://a"], api_key="s3cret")
    await remote.generate([1, 2], GenerationParams(max_tokens=8, regex=r"\{.*\}"))
    sent = json.loads(script.requests[0].content)
    assert sent["structured_outputs"] == {"regex": r"\{.*\}"}
    assert script.requests[0].headers["authorization"] == "Bearer s3cret"


async def test_equally_idle_servers_take_turns():
    script = Script({"a": [(200, completion())] * 2, "b": [(200, completion())] * 2})
    remote = engine(script)
    for _ in range(4):
        await remote.generate([1], PARAMS)
    assert sorted(script.hosts) == ["a", "a", "b", "b"] and script.hosts[0] != script.hosts[1]


class Gated:
    """Server a answers only once released; b at once. Counts what each host was sent."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.hosts: list[str] = []
        self.bodies: list[dict] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(request.url.host)
        self.bodies.append(json.loads(request.content))
        if request.url.host == "a":
            await self.release.wait()
        return httpx.Response(200, json=completion())


async def test_least_outstanding_server_is_chosen_and_counts_are_visible():
    gated = Gated()
    remote = engine(gated, concurrency=8, prefix_affinity=False)
    remote._rotation = 0  # a first
    slow = asyncio.ensure_future(remote.generate([1], PARAMS))
    await asyncio.sleep(0.01)
    assert gated.hosts == ["a"]
    for _ in range(3):  # a has one outstanding: every later request goes to b
        await remote.generate([1], PARAMS)
    assert gated.hosts == ["a", "b", "b", "b"]
    servers = {s["url"]: s for s in remote.stats()["servers"]}
    assert servers["http://a"]["outstanding"] == 1 and servers["http://b"]["outstanding"] == 0
    assert remote.stats()["unfinished_requests"] == 1
    assert _sample("flip_remote_server_outstanding", "http://a") == 1
    gated.release.set()
    await slow
    assert remote.outstanding_requests == 0


async def test_prefix_affinity_sends_an_items_prompts_to_one_server_within_a_bound():
    gated = Gated()
    gated.release.set()
    remote = engine(gated, concurrency=32, affinity_max_imbalance=2)
    response = list(range(100, 196))  # three 32-token blocks
    await remote.generate(response + [7], PARAMS)
    first = gated.hosts[0]
    for distractor in ([8, 9], [10, 11], [12]):
        await remote.generate(response + distractor, PARAMS)
    assert gated.hosts == [first] * 4  # not in turn: the server holding the response's prefix
    remote._rotation = 1 if first == "a" else 0  # the other server's turn
    await remote.generate(list(range(500, 600)), PARAMS)  # an unrelated prompt: in turn
    assert gated.hosts[-1] != first
    # The holder busier than the bound allows: the prompt goes to the least busy server instead.
    holder = next(b for b in remote.backends if b.url == f"http://{first}")
    holder.outstanding = 3
    await remote.generate(response + [13], PARAMS)
    assert gated.hosts[-1] != first


def test_prefix_block_hashes_cover_whole_blocks_and_everything_before():
    a, b = list(range(70)), list(range(64)) + [999] * 6
    assert len(prefix_block_hashes(a)) == 2 and prefix_block_hashes(a) == prefix_block_hashes(b)
    assert prefix_block_hashes([5] + a[1:])[1] != prefix_block_hashes(a)[1]  # block 2 keys on block 1 too


@pytest.mark.parametrize("failure", [(503, {"error": "busy"}), (429, {}), httpx.ConnectError("refused")])
async def test_failure_is_retried_on_the_next_url_and_that_url_cools_down(failure):
    script = Script({"a": [failure], "b": [(200, completion("ok"))] * 2})
    remote = engine(script)
    remote._rotation = 0
    assert (await remote.generate([1], PARAMS)).text == "ok"
    assert script.hosts == ["a", "b"]
    assert not remote.backends[0].up and remote.backends[1].up
    await remote.generate([1], PARAMS)  # a is cooling down: b again
    assert script.hosts == ["a", "b", "b"]
    assert remote.is_healthy()
    state = {s["url"]: s for s in remote.stats()["servers"]}["http://a"]
    assert state["cooling_down"] and state["failures"] == 1 and state["last_error"].startswith("http://a")
    assert _sample("flip_remote_server_cooling_down", "http://a") == 1.0
    assert _sample("flip_remote_server_failures_total", "http://a") >= 1


async def test_fleet_down_is_engine_unavailable_not_ready_but_alive():
    script = Script({"a": [httpx.ConnectError("refused")] * 3, "b": [httpx.ReadTimeout("slow")] * 3})
    remote = engine(script, retries=2)
    with pytest.raises(EngineUnavailable, match="3 attempts"):
        await remote.generate([1], PARAMS)
    assert len(script.requests) == 3
    assert not remote.is_healthy()  # /ready 503 while every server cools down ...
    assert remote.is_alive()  # ... but the watchdog does not end the process for it


async def test_client_error_is_the_items_error_and_not_retried():
    script = Script({"a": [(400, {"error": {"message": "prompt too long"}})]})
    remote = engine(script, urls=["http://a"])
    with pytest.raises(RemoteRequestError, match="400"):
        await remote.generate([1], PARAMS)
    assert len(script.requests) == 1 and remote.is_healthy()


async def test_prompt_logprobs_via_completions_are_read_for_the_actual_tokens():
    body = completion()
    body["choices"][0]["prompt_logprobs"] = [
        None,
        {"7": {"logprob": -1.5, "rank": 3}, "9": {"logprob": -0.2, "rank": 1}},
        {"8": {"logprob": -0.7, "rank": 1}},
    ]
    script = Script({"a": [(200, body)]})
    assert await engine(script, urls=["http://a"]).prompt_logprobs([5, 7, 8], scored_from=2) == [None, -1.5, -0.7]
    sent = json.loads(script.requests[0].content)
    assert script.requests[0].url.path == "/v1/completions"
    assert sent["prompt_logprobs"] == 0 and sent["max_tokens"] == 1


def generated(ids: list[int], cached: int) -> dict:
    """An /inference/v1/generate answer: cached positions hold garbage, as vLLM leaves them."""
    positions = [None] + [{str(t if k > cached else 0): {"logprob": -float(k)}} for k, t in enumerate(ids) if k]
    return {
        "choices": [{"index": 0, "token_ids": [1]}],
        "prompt_logprobs": positions,
        "usage": {"prompt_tokens": len(ids), "prompt_tokens_details": {"cached_tokens": cached}},
    }


async def test_prompt_logprobs_via_generate_read_the_prefix_cache_for_the_tail():
    ids = list(range(10, 20))
    script = Script({"a": [(200, generated(ids, cached=4))]})
    remote = engine(script, urls=["http://a"], prompt_logprobs_endpoint="generate")
    logprobs = await remote.prompt_logprobs(ids, scored_from=6)
    assert logprobs == [None] * 5 + [-5.0, -6.0, -7.0, -8.0, -9.0]
    sent = json.loads(script.requests[0].content)
    assert script.requests[0].url.path == "/inference/v1/generate" and sent["token_ids"] == ids
    assert sent["sampling_params"] == {
        "max_tokens": 1,
        "temperature": 0.0,
        "prompt_logprobs": 0,
        "detokenize": False,
        "skip_reading_prefix_cache": False,
    }
    assert remote.stats()["prefix_cache"] == {"queries": 10, "hits": 4, "hit_rate": 0.4}


async def test_prompt_found_cached_into_its_tail_runs_again_without_the_cache():
    ids = list(range(10, 20))
    script = Script({"a": [(200, generated(ids, cached=8)), (200, generated(ids, cached=0))]})
    remote = engine(script, urls=["http://a"], prompt_logprobs_endpoint="generate")
    logprobs = await remote.prompt_logprobs(ids, scored_from=6)
    assert logprobs == [None] + [-float(k) for k in range(1, 10)]
    second = json.loads(script.requests[1].content)["sampling_params"]
    assert second["skip_reading_prefix_cache"] is True


async def test_whole_prompt_needed_never_reads_the_cache():
    ids = list(range(10, 14))
    script = Script({"a": [(200, generated(ids, cached=0))]})
    remote = engine(script, urls=["http://a"], prompt_logprobs_endpoint="generate")
    await remote.prompt_logprobs(ids)
    assert json.loads(script.requests[0].content)["sampling_params"]["skip_reading_prefix_cache"] is True


async def test_server_without_prompt_logprobs_is_an_item_error():
    script = Script({"a": [(200, completion())]})
    with pytest.raises(RemoteRequestError, match="prompt_logprobs"):
        await engine(script, urls=["http://a"]).prompt_logprobs([5, 7])


async def test_after_shutdown_requests_are_unavailable():
    remote = engine(Script({}))
    await remote.shutdown()
    assert not remote.is_healthy() and not remote.is_alive()
    with pytest.raises(EngineUnavailable):
        await remote.generate([1], PARAMS)


async def test_connections_are_renewed_after_their_lifetime(monkeypatch):
    script = Script({"a": [(200, completion())] * 3})
    remote = engine(script, urls=["http://a"], connection_lifetime_s=60.0)
    await remote.generate([1], PARAMS)
    first = remote.backends[0].pool
    await remote.generate([1], PARAMS)
    assert remote.backends[0].pool is first  # within its lifetime: kept
    first.created -= 61
    await remote.generate([1], PARAMS)
    assert remote.backends[0].pool is not first
    await asyncio.sleep(0)
    assert first.client.is_closed  # idle once retired: closed
    await remote.shutdown()


class Silent:
    """A server that accepts every request and never answers (a stopped process)."""

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_watchdog_fails_a_fleet_that_stops_answering():
    remote = engine(Silent(), urls=["http://a"])
    reasons: list[str] = []
    request = asyncio.ensure_future(remote.generate([1], PARAMS))
    reason = await asyncio.wait_for(watch(remote, reasons.append, interval_s=0.02, stall_s=0.2), 5)
    assert "hung" in reason and reasons == [reason]
    with pytest.raises(EngineUnavailable, match="hung"):
        await asyncio.wait_for(request, 2)  # failed at once, not after the 120 s timeout
    with pytest.raises(EngineUnavailable, match="hung"):
        await remote.generate([1], PARAMS)
    assert remote.outstanding_requests == 0 and not remote.is_alive()


async def test_cancelling_a_request_closes_it_and_frees_the_server():
    remote = engine(Silent(), urls=["http://a"])
    request = asyncio.ensure_future(remote.generate([1], PARAMS))
    await asyncio.sleep(0.02)
    assert remote.backends[0].outstanding == 1
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    await asyncio.sleep(0.01)
    assert remote.backends[0].outstanding == 0 and remote.outstanding_requests == 0


# --- start-up checks


CARD = {"id": "SmolLM2-135M-Instruct", "root": "/models/SmolLM2-135M-Instruct", "max_model_len": 2048}


def test_choose_model_matches_the_fronts_model_by_name_or_path():
    assert choose_model({"u": [CARD]}, None, "SmolLM2-135M-Instruct") == ("SmolLM2-135M-Instruct", 2048)
    assert choose_model({"u": [CARD]}, None, "HuggingFaceTB/SmolLM2-135M-Instruct")[0] == "SmolLM2-135M-Instruct"
    alias = {**CARD, "id": "reward"}
    assert choose_model({"u": [alias]}, "reward", "/weights/SmolLM2-135M-Instruct")[0] == "reward"


def test_choose_model_refuses_another_model_naming_both():
    qwen = {"id": "Qwen/Qwen2.5-7B-Instruct", "root": "Qwen/Qwen2.5-7B-Instruct", "max_model_len": 32768}
    with pytest.raises(FleetMismatch, match=r"SmolLM2-135M-Instruct.*Qwen2\.5-7B-Instruct"):
        choose_model({"http://q": [qwen]}, None, "SmolLM2-135M-Instruct")
    with pytest.raises(FleetMismatch, match=r"SmolLM2.*Qwen"):
        choose_model({"http://q": [qwen]}, "Qwen/Qwen2.5-7B-Instruct", "SmolLM2-135M-Instruct")
    with pytest.raises(FleetMismatch, match="does not serve model 'other'"):
        choose_model({"http://q": [qwen]}, "other", "Qwen2.5-7B-Instruct")


class ChatWordTokenizer(WordTokenizer):
    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return super().apply_chat_template(messages, tokenize, add_generation_prompt)


def _http(handler) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


def test_tokenizer_round_trip_passes_when_the_ids_agree_and_refuses_otherwise():
    tokenizer = ChatWordTokenizer()

    def agreeing(request):
        return httpx.Response(200, json={"tokens": tokenizer.encode(json.loads(request.content)["prompt"])})

    check_tokenizer(_http(agreeing), "http://u", "m", tokenizer, "front-model")

    def other(request):
        ids = tokenizer.encode(json.loads(request.content)["prompt"])
        return httpx.Response(200, json={"tokens": ids[:3] + [999] + ids[4:]})

    with pytest.raises(FleetMismatch, match=r"'front-model'.*'m'.*first at token 3"):
        check_tokenizer(_http(other), "http://u", "m", tokenizer, "front-model")


def test_discover_models_waits_for_one_and_names_a_refused_key():
    def handler(request):
        if request.url.host == "down":
            raise httpx.ConnectError("refused")
        if request.url.host == "locked":
            return httpx.Response(401, json={"error": "Unauthorized"})
        return httpx.Response(200, json={"data": [CARD]})

    assert discover_models(_http(handler), ["http://down", "http://up"], wait_s=0) == {"http://up": [CARD]}
    with pytest.raises(RuntimeError, match="no remote server answered"):
        discover_models(_http(handler), ["http://down"], wait_s=0)
    with pytest.raises(FleetMismatch, match="FLIP_REMOTE_API_KEY"):
        discover_models(_http(handler), ["http://locked"], wait_s=0)


def test_remote_settings_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FLIP_ENGINE", "remote")
    monkeypatch.setenv("FLIP_REMOTE_URLS", "http://vllm-0:8000/, http://vllm-1:8000")
    monkeypatch.setenv("FLIP_REMOTE_API_KEY", "k1")
    settings = Settings()
    assert settings.remote_urls == ["http://vllm-0:8000", "http://vllm-1:8000"]
    assert settings.remote_api_key_value() == "k1"
    key_file = tmp_path / "key"
    key_file.write_text("k2\n")
    monkeypatch.setenv("FLIP_REMOTE_API_KEY_FILE", str(key_file))
    assert Settings().remote_api_key_value() == "k2"
    monkeypatch.delenv("FLIP_REMOTE_URLS")
    with pytest.raises(ValueError, match="remote_urls"):
        Settings()


async def test_a_headless_service_is_one_server_per_pod_and_follows_scaling():
    pods = {"http://vllm-pods:8000": ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]}

    async def resolver(url: str) -> list[str]:
        if url not in pods:
            raise OSError("no such host")
        return pods[url]

    hosts: list[str] = []

    def handler(request):
        hosts.append(request.url.host)
        return httpx.Response(200, json=completion())

    remote = engine(handler, urls=["http://vllm-pods:8000"], resolve_s=3600)
    remote._resolver = resolver
    await remote.generate([1], PARAMS)
    await remote.generate([1], PARAMS)
    assert sorted(hosts) == ["10.0.0.1", "10.0.0.2"]
    first = next(b for b in remote.backends if b.url == "http://10.0.0.1:8000")
    first.failures_total = 5
    pods["http://vllm-pods:8000"] = ["http://10.0.0.1:8000", "http://10.0.0.3:8000"]  # scaled: a pod replaced
    await remote.refresh_backends()
    assert [b.url for b in remote.backends] == ["http://10.0.0.1:8000", "http://10.0.0.3:8000"]
    assert remote.backends[0] is first and first.failures_total == 5  # a known pod keeps its record
    assert {s["source"] for s in remote.stats()["servers"]} == {"http://vllm-pods:8000"}
    del pods["http://vllm-pods:8000"]  # DNS down: keep what we have
    await remote.refresh_backends()
    assert [b.url for b in remote.backends] == ["http://10.0.0.1:8000", "http://10.0.0.3:8000"]
    await remote.shutdown()


async def test_resolve_addresses_of_a_name_and_of_an_ip_literal():
    from flip_reward.engines.fleet import resolve_addresses

    assert await resolve_addresses("http://127.0.0.1:8001") == ["http://127.0.0.1:8001"]
    assert await resolve_addresses("http://localhost:8001/v") in (
        ["http://127.0.0.1:8001/v"],
        ["http://127.0.0.1:8001/v", "http://[::1]:8001/v"],
        ["http://[::1]:8001/v", "http://127.0.0.1:8001/v"],
    )


# --- the service in remote mode (the reported failures: /info 500, the watchdog dying on its first tick)


def fleet_of_mocks(request: httpx.Request) -> httpx.Response:
    """Two scripted vLLM servers: completions, and prompt logprobs through /inference/v1/generate."""
    body = json.loads(request.content)
    if request.url.path == "/inference/v1/generate":
        ids = body["token_ids"]
        return httpx.Response(200, json=generated(ids, cached=0))
    return httpx.Response(200, json=completion('Explain the sky"'))


def test_info_and_watchdog_work_in_remote_mode(tmp_path):
    from fastapi.testclient import TestClient

    from flip_reward.main import create_app
    from flip_reward.service import FlipService
    from tests.fakes import HashEmbedder
    from tests.unit.conftest import _wait_ready

    remote = RemoteEngine(
        ["http://a", "http://b"],
        "m",
        tokenizer=WordTokenizer(),
        max_model_len=2048,
        transport=httpx.MockTransport(fleet_of_mocks),
        prompt_logprobs_endpoint="generate",
    )
    settings = Settings(cache_dir=tmp_path, watchdog_interval_s=0.01)
    service = FlipService(settings, engine_factory=lambda s: remote, embedder_factory=lambda s: HashEmbedder())
    with TestClient(create_app(settings, service)) as client:
        _wait_ready(client)
        item = {"prompt": "Explain why the sky is blue", "response": "Sunlight scatters off the air molecules."}
        assert client.post("/reward", json=item).json()["reward"] is not None
        assert client.post("/reward", json={**item, "method": "generate"}).json()["reward"] is not None
        time.sleep(0.1)  # ten watchdog ticks
        assert not service._watchdog.done()
        info = client.get("/info")
        assert info.status_code == 200
        engine = info.json()["throughput"]["engine"]
        assert {s["url"] for s in engine["servers"]} == {"http://a", "http://b"}
        assert sum(s["requests"] for s in engine["servers"]) > 0 and engine["unfinished_requests"] == 0
        metrics_text = client.get("/metrics").text
        assert 'flip_remote_server_outstanding{url="http://a"}' in metrics_text


async def test_unwritten_slots_past_the_reported_cache_run_again_without_it():
    """A request preempted and resumed finds more of its prompt cached than it reports: those
    positions hold no entry for the prompt token. The request runs again, computing every position."""
    ids = list(range(10, 20))
    resumed = generated(ids, cached=2)
    resumed["prompt_logprobs"][5] = {"0": {"logprob": -0.5}}  # an unwritten slot past the reported 2
    script = Script({"a": [(200, resumed), (200, generated(ids, cached=0))]})
    remote = engine(script, urls=["http://a"], prompt_logprobs_endpoint="generate")
    assert await remote.prompt_logprobs(ids, scored_from=6) == [None] + [-float(k) for k in range(1, 10)]
    assert json.loads(script.requests[1].content)["sampling_params"]["skip_reading_prefix_cache"] is True
    short = Script({"a": [(200, {**generated(ids, cached=0), "prompt_logprobs": [None] * 3})]})
    with pytest.raises(UnreadablePromptLogprobs, match="3 prompt logprob entries for 10"):
        await engine(short, urls=["http://a"], prompt_logprobs_endpoint="generate").prompt_logprobs(ids)


def generated_v2(ids: list[int], cached: int) -> dict:
    """The same answer from a server on vLLM's V2 model runner (CUDA's default): entries only for
    the positions it computed, after the leading None (vllm/v1/worker/gpu/sample/prompt_logprob.py,
    compute_prompt_logprobs; tests/vllm_shapes.py builds the in-process equivalent)."""
    body = generated(ids, cached)
    body["prompt_logprobs"] = [None] + body["prompt_logprobs"][cached + 1 :]
    return body


async def test_v2_runner_replies_are_read_end_aligned_on_both_endpoints():
    ids = list(range(10, 20))
    script = Script({"a": [(200, generated_v2(ids, cached=4))]})
    remote = engine(script, urls=["http://a"], prompt_logprobs_endpoint="generate")
    assert await remote.prompt_logprobs(ids, scored_from=6) == [None] * 5 + [-5.0, -6.0, -7.0, -8.0, -9.0]
    assert len(script.requests) == 1  # read from the cache, nothing run again
    # /v1/completions: a server that reports a cache hit is read by its count
    body = completion()
    body["choices"][0]["prompt_logprobs"] = generated_v2(ids, cached=4)["prompt_logprobs"]
    body["usage"] = {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 4}}
    script = Script({"a": [(200, body)]})
    assert await engine(script, urls=["http://a"]).prompt_logprobs(ids) == [None] * 5 + [-5.0, -6.0, -7.0, -8.0, -9.0]


async def test_v2_reply_with_more_cached_than_reported_runs_again_then_fails_the_item():
    """Resumed after preemption, a V2 server returns fewer entries than its reported hit implies."""
    ids = list(range(10, 20))
    resumed = generated_v2(ids, cached=4)
    resumed["prompt_logprobs"] = [None] + resumed["prompt_logprobs"][3:]  # rows from position 7 on
    script = Script({"a": [(200, resumed), (200, generated_v2(ids, cached=0))]})
    remote = engine(script, urls=["http://a"], prompt_logprobs_endpoint="generate")
    assert await remote.prompt_logprobs(ids, scored_from=6) == [None] + [-float(k) for k in range(1, 10)]
    assert json.loads(script.requests[1].content)["sampling_params"]["skip_reading_prefix_cache"] is True
    twice = Script({"a": [(200, resumed), (200, resumed)]})
    with pytest.raises(UnreadablePromptLogprobs):
        await engine(twice, urls=["http://a"], prompt_logprobs_endpoint="generate").prompt_logprobs(ids, 6)


async def test_garbage_in_cached_slots_that_vllm_cannot_serialize_runs_again_without_the_cache():
    """Seen against vllm serve under load: NaN in an unwritten slot, and vLLM answers 400."""
    ids = list(range(10, 20))
    nan = {"error": {"message": "Out of range float values are not JSON compliant", "type": "BadRequestError"}}
    script = Script({"a": [(400, nan), (200, generated(ids, cached=0))]})
    remote = engine(script, urls=["http://a"], prompt_logprobs_endpoint="generate")
    assert await remote.prompt_logprobs(ids, scored_from=6) == [None] + [-float(k) for k in range(1, 10)]
    assert json.loads(script.requests[1].content)["sampling_params"]["skip_reading_prefix_cache"] is True
    other = Script({"a": [(400, {"error": {"message": "prompt too long"}})]})
    with pytest.raises(RemoteRequestError, match="too long"):
        await engine(other, urls=["http://a"], prompt_logprobs_endpoint="generate").prompt_logprobs(ids, 6)


def _probe_server(cached_reply):
    """A vLLM server for probe_runtime: /version, and /inference/v1/generate answering a request
    that may read the prefix cache with `cached_reply(ids)` and one that may not with all positions."""
    sent: list[bool] = []

    def handler(request):
        if request.url.path == "/version":
            return httpx.Response(200, json={"version": "0.32.0"})
        body = json.loads(request.content)
        reads_cache = not body["sampling_params"]["skip_reading_prefix_cache"]
        sent.append(reads_cache)
        if reads_cache:
            return cached_reply(body["token_ids"])
        return httpx.Response(200, json=generated(body["token_ids"], cached=0))

    return handler, sent


def test_probe_runtime_tells_the_runners_apart_by_the_layout_of_a_cached_reply():
    for reply, runner in ((generated, "V1"), (generated_v2, "V2")):
        handler, sent = _probe_server(lambda ids, reply=reply: httpx.Response(200, json=reply(ids, cached=32)))
        info = probe_runtime(_http(handler), "http://u", "m", WordTokenizer())
        assert info == {"vllm_version": "0.32.0", "model_runner": runner}
        assert sent == [True]


def test_probe_runtime_reads_vllms_nan_refusal_of_a_cached_reply_as_the_v1_layout():
    """Seen in CI against vllm serve on the CPU: once the probe was cached, every cache-reading probe
    got 400 (NaN in the V1 runner's unwritten rows) while the same prompt without the cache got 200."""
    nan = {"error": {"message": "Out of range float values are not JSON compliant", "code": 400}}
    handler, sent = _probe_server(lambda ids: httpx.Response(400, json=nan))
    assert probe_runtime(_http(handler), "http://u", "m", WordTokenizer())["model_runner"] == "V1"
    assert sent == [True, False]
    # a 400 for another reason, or a refusal without the cache too, proves nothing: unknown
    handler, sent = _probe_server(lambda ids: httpx.Response(400, json={"error": {"message": "prompt too long"}}))
    assert probe_runtime(_http(handler), "http://u", "m", WordTokenizer())["model_runner"] is None
    assert sent == [True] * 4

    def refuses_all(request):
        return httpx.Response(400, json=nan) if request.url.path != "/version" else httpx.Response(404)

    assert probe_runtime(_http(refuses_all), "http://u", "m", WordTokenizer()) == {
        "vllm_version": None,
        "model_runner": None,
    }
