import pytest
from fastapi.testclient import TestClient

from flip_reward.config import Settings
from flip_reward.main import create_app
from flip_reward.service import FlipService
from tests.fakes import FakeEngine, HashEmbedder


@pytest.fixture
def fake_engine():
    return FakeEngine()


@pytest.fixture
def settings(tmp_path):
    return Settings(cache_dir=tmp_path, max_batch_items=8, max_tokens=32, method="generate")


@pytest.fixture
def client(settings, fake_engine):
    service = FlipService(settings, engine_factory=lambda s: fake_engine, embedder_factory=lambda s: HashEmbedder())
    with TestClient(create_app(settings, service)) as test_client:
        _wait_ready(test_client)
        yield test_client


def _wait_ready(test_client):
    import time

    for _ in range(200):
        if test_client.get("/ready").status_code == 200:
            return
        time.sleep(0.01)
    raise AssertionError("fake service never became ready")
