"""Remote engine logic against scripted HTTP answers (httpx.MockTransport): what is sent, spreading
across URLs, retries, cool-downs and error mapping. The real server is in
tests/integration/test_remote_engine.py."""

from __future__ import annotations

import json

import httpx
import pytest

from app.config import Settings
from app.engines import openai_remote
from app.engines.base import EngineUnavailable, GenerationParams
from app.engines.openai_remote import RemoteEngine, RemoteRequestError, discover_model


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


def engine(script: Script, urls=("http://a", "http://b"), retries: int = 2, concurrency: int = 4) -> RemoteEngine:
    return RemoteEngine(list(urls), "m", tokenizer=None, max_model_len=2048, max_concurrency=concurrency,
                        retries=retries, transport=httpx.MockTransport(script))


PARAMS = GenerationParams(max_tokens=16)


async def test_sends_token_ids_greedy_with_neutral_sampling():
    script = Script({"a": [(200, completion("Explain rain", 5, 3))]})
    gen = await engine(script, urls=["http://a"]).generate([1, 2, 3, 4, 5], PARAMS)
    sent = json.loads(script.requests[0].content)
    assert script.requests[0].url.path == "/v1/completions"
    assert sent["prompt"] == [1, 2, 3, 4, 5] and sent["model"] == "m"
    assert sent["temperature"] == 0.0 and sent["max_tokens"] == 16 and "seed" not in sent
    assert sent["repetition_penalty"] == 1.0 and sent["top_p"] == 1.0
    assert (gen.text, gen.prompt_tokens, gen.completion_tokens, gen.finish_reason) == ("Explain rain", 5, 3, "stop")


async def test_requests_go_round_robin():
    script = Script({"a": [(200, completion())] * 2, "b": [(200, completion())] * 2})
    remote = engine(script)
    for _ in range(4):
        await remote.generate([1], PARAMS)
    assert script.hosts == ["a", "b", "a", "b"]


@pytest.mark.parametrize("failure", [(503, {"error": "busy"}), (429, {}), httpx.ConnectError("refused")])
async def test_failure_is_retried_on_the_next_url_and_that_url_cools_down(failure):
    script = Script({"a": [failure], "b": [(200, completion("ok"))] * 2})
    remote = engine(script)
    assert (await remote.generate([1], PARAMS)).text == "ok"
    assert script.hosts == ["a", "b"]
    assert not remote.backends[0].up and remote.backends[1].up
    await remote.generate([1], PARAMS)  # a is cooling down: b again
    assert script.hosts == ["a", "b", "b"]
    assert remote.is_healthy()


async def test_fleet_down_is_engine_unavailable_and_not_healthy():
    script = Script({"a": [httpx.ConnectError("refused")] * 3, "b": [httpx.ReadTimeout("slow")] * 3})
    remote = engine(script, retries=2)
    with pytest.raises(EngineUnavailable, match="3 attempts"):
        await remote.generate([1], PARAMS)
    assert len(script.requests) == 3
    assert not remote.is_healthy()


async def test_client_error_is_the_items_error_and_not_retried():
    script = Script({"a": [(400, {"error": {"message": "prompt too long"}})]})
    remote = engine(script, urls=["http://a"])
    with pytest.raises(RemoteRequestError, match="400"):
        await remote.generate([1], PARAMS)
    assert len(script.requests) == 1 and remote.is_healthy()


async def test_prompt_logprobs_are_read_for_the_actual_tokens():
    body = completion()
    body["choices"][0]["prompt_logprobs"] = [
        None,
        {"7": {"logprob": -1.5, "rank": 3}, "9": {"logprob": -0.2, "rank": 1}},
        {"8": {"logprob": -0.7, "rank": 1}},
    ]
    script = Script({"a": [(200, body)]})
    assert await engine(script, urls=["http://a"]).prompt_logprobs([5, 7, 8]) == [None, -1.5, -0.7]
    sent = json.loads(script.requests[0].content)
    assert sent["prompt_logprobs"] == 0 and sent["max_tokens"] == 1


async def test_server_without_prompt_logprobs_is_an_item_error():
    script = Script({"a": [(200, completion())]})
    with pytest.raises(RemoteRequestError, match="prompt_logprobs"):
        await engine(script, urls=["http://a"]).prompt_logprobs([5, 7])


async def test_after_shutdown_requests_are_unavailable():
    remote = engine(Script({}))
    await remote.shutdown()
    assert not remote.is_healthy()
    with pytest.raises(EngineUnavailable):
        await remote.generate([1], PARAMS)


def test_discover_model(monkeypatch):
    listing = {"data": [{"id": "qwen", "max_model_len": 4096}, {"id": "lora", "max_model_len": 4096}]}
    calls = []

    def handler(request):
        calls.append(request.url.host)
        if request.url.host == "down":
            raise httpx.ConnectError("refused")
        return httpx.Response(200, json=listing)

    real_client = httpx.Client
    monkeypatch.setattr(httpx, "Client", lambda **kw: real_client(transport=httpx.MockTransport(handler), **kw))
    assert discover_model(["http://down", "http://up"], None, wait_s=0) == ("qwen", 4096)
    assert discover_model(["http://up"], "lora", wait_s=0) == ("lora", 4096)
    with pytest.raises(RuntimeError, match="does not serve model 'other'"):
        discover_model(["http://up"], "other", wait_s=0)
    with pytest.raises(RuntimeError, match="no remote server answered"):
        discover_model(["http://down"], None, wait_s=0)


def test_remote_settings_from_environment(monkeypatch):
    monkeypatch.setenv("FLIP_ENGINE", "remote")
    monkeypatch.setenv("FLIP_REMOTE_URLS", "http://vllm-0:8000/, http://vllm-1:8000")
    settings = Settings()
    assert settings.remote_urls == ["http://vllm-0:8000", "http://vllm-1:8000"]
    monkeypatch.delenv("FLIP_REMOTE_URLS")
    with pytest.raises(ValueError, match="remote_urls"):
        Settings()
