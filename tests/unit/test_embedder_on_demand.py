"""The embedder loads only for what uses it: generate with the embedding or hybrid similarity."""

import asyncio
import threading

import pytest
from fastapi.testclient import TestClient

from flip_reward.config import Settings
from flip_reward.embeddings.on_demand import OnDemandEmbedder
from flip_reward.main import create_app
from flip_reward.service import FlipService
from tests.fakes import FakeEngine, HashEmbedder
from tests.unit.conftest import _wait_ready

ITEM = {"prompt": "Explain why the sky is blue", "response": "the sky looks blue because of Rayleigh scattering"}


class CountingFactory:
    def __init__(self, fail: bool = False) -> None:
        self.calls, self.fail = 0, fail

    def __call__(self, settings: Settings) -> HashEmbedder:
        self.calls += 1
        if self.fail:
            raise AssertionError("this service must not load the embedder")
        return HashEmbedder()


def _client(settings: Settings, factory: CountingFactory) -> TestClient:
    service = FlipService(settings, engine_factory=lambda s: FakeEngine(), embedder_factory=factory)
    return TestClient(create_app(settings, service))


def test_the_default_method_is_ready_without_the_embedder(tmp_path):
    never = CountingFactory(fail=True)  # a load at start would fail the service: /ready would never be 200
    with _client(Settings(cache_dir=tmp_path), never) as client:
        _wait_ready(client)
        assert client.post("/reward", json=ITEM).json()["reward"] is not None  # likelihood
        assert client.post("/reward", json={**ITEM, "method": "judge"}).status_code == 200
        f1 = client.post("/reward", json={**ITEM, "method": "generate", "similarity": "f1", "details": True}).json()
        assert f1["reward"] == f1["similarities"]["f1"] and f1["similarities"]["embedding"] is None
        embedder = client.get("/info").json()["embedder"]
    assert never.calls == 0 and embedder["status"] == "not loaded" and "not needed yet" in embedder["reason"]


def test_the_first_request_that_compares_embeddings_loads_it_once(tmp_path):
    factory = CountingFactory()
    with _client(Settings(cache_dir=tmp_path), factory) as client:
        _wait_ready(client)
        assert factory.calls == 0
        for _ in range(2):
            body = client.post("/reward", json={**ITEM, "method": "generate", "details": True}).json()
            assert set(body["similarities"]) == {"f1", "embedding", "hybrid"}
            assert body["reward"] == pytest.approx(body["similarities"]["hybrid"])
        embedder = client.get("/info").json()["embedder"]
    assert factory.calls == 1
    assert embedder["status"] == "loaded" and embedder["reason"].startswith("on demand")


def test_a_default_method_that_compares_embeddings_loads_it_at_start(tmp_path):
    factory = CountingFactory()
    with _client(Settings(cache_dir=tmp_path, method="generate", similarity="embedding"), factory) as client:
        _wait_ready(client)
        assert factory.calls == 1  # /ready waited for it
        embedder = client.get("/info").json()["embedder"]
    assert embedder["status"] == "loaded" and "FLIP_SIMILARITY=embedding" in embedder["reason"]


async def test_concurrent_callers_share_one_load_and_a_failed_load_is_tried_again():
    attempts: list[int] = []
    release = threading.Event()

    def factory() -> HashEmbedder:
        attempts.append(1)
        release.wait(timeout=30)
        if len(attempts) == 1:
            raise OSError("weights not found")
        return HashEmbedder()

    embedder = OnDemandEmbedder(factory)
    first = [asyncio.ensure_future(embedder.aencode(["a b"])) for _ in range(3)]
    await asyncio.sleep(0)
    assert embedder.state()["status"] == "loading"
    release.set()
    outcomes = await asyncio.gather(*first, return_exceptions=True)
    assert len(attempts) == 1 and all(isinstance(o, OSError) for o in outcomes)
    assert embedder.state()["error"] == "OSError: weights not found" and not embedder.loaded
    vectors = await embedder.aencode(["a b", "c"])
    assert len(attempts) == 2 and vectors.shape[0] == 2 and embedder.state()["error"] is None
