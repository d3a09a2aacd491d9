"""Authentication, limits, the one error shape, the engine watchdog and the logs, with the test
double engine (the real engine's faults are in tests/integration/test_faults.py)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.config
import time

import pytest
from fastapi.testclient import TestClient

from flip_reward.api.auth import key_matches, load_api_keys
from flip_reward.config import Settings
from flip_reward.engines.watchdog import diagnose, watch
from flip_reward.logs import log_config, request_id_var
from flip_reward.main import create_app
from flip_reward.service import FlipService
from tests.fakes import FakeEngine, HashEmbedder
from tests.unit.conftest import _wait_ready

ITEM = {"prompt": "Explain why the sky is blue", "response": "why the sky is blue: Rayleigh scattering"}
KEY = "s3cret-key-2"


def _client(settings: Settings, engine: FakeEngine | None = None) -> TestClient:
    engine = engine or FakeEngine()
    service = FlipService(settings, engine_factory=lambda s: engine, embedder_factory=lambda s: HashEmbedder())
    return TestClient(create_app(settings, service))


@pytest.fixture
def keyed(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# rotated 2024-05\nfile-key-1\n\n")
    settings = Settings(cache_dir=tmp_path, api_keys=f"env-key-1, {KEY}", api_keys_file=keys_file)
    with _client(settings) as client:
        _wait_ready(client)
        yield client


def _assert_error_shape(response, status: int, type_: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"type", "message", "field", "request_id"}
    assert error["request_id"] == response.headers["x-request-id"]
    if type_:
        assert error["type"] == type_
    return error


# --- authentication


def test_no_key_is_401_wrong_key_is_403_right_key_is_200(keyed):
    _assert_error_shape(keyed.post("/reward", json=ITEM), 401, "unauthorized")
    assert keyed.post("/reward", json=ITEM).headers["www-authenticate"] == "Bearer"
    _assert_error_shape(keyed.post("/reward", json=ITEM, headers={"Authorization": f"Basic {KEY}"}), 401)
    _assert_error_shape(keyed.post("/reward", json=ITEM, headers={"Authorization": "Bearer nope"}), 403, "forbidden")
    for key in ("env-key-1", KEY, "file-key-1"):
        assert keyed.post("/reward", json=ITEM, headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_unauthenticated_request_is_refused_before_its_body_is_read(keyed):
    # Broken JSON would be a 422 if the body were parsed first.
    response = keyed.post("/reward", content=b"{broken", headers={"content-type": "application/json"})
    _assert_error_shape(response, 401)


def test_probes_docs_and_metrics_are_open_by_default(keyed):
    for path in ("/health", "/ready", "/metrics", "/openapi.json"):
        assert keyed.get(path).status_code == 200, path
    _assert_error_shape(keyed.get("/info"), 401)
    _assert_error_shape(keyed.get("/no-such-route"), 401)  # routes are not revealed without a key


def test_metrics_can_require_the_key(tmp_path):
    with _client(Settings(cache_dir=tmp_path, api_keys=KEY, metrics_need_key=True)) as client:
        _assert_error_shape(client.get("/metrics"), 401)
        assert client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert client.get("/health").status_code == 200


def test_openapi_declares_the_bearer_scheme_on_protected_routes(keyed):
    schema = keyed.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert schema["paths"]["/reward"]["post"]["security"] == [{"bearer": []}]
    assert {"401", "403"} <= set(schema["paths"]["/reward"]["post"]["responses"])
    assert "security" not in schema["paths"]["/health"]["get"]


def test_without_keys_the_service_is_open(client):
    assert client.post("/reward", json=ITEM).status_code == 200
    assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


def test_key_loading_and_matching(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("a-key\n  b-key  \n# comment\n")
    keys = load_api_keys(Settings(cache_dir=tmp_path, api_keys=" c-key ,", api_keys_file=keys_file))
    assert keys == [b"c-key", b"a-key", b"b-key"]
    assert key_matches(b"b-key", keys) and not key_matches(b"b-ke", keys) and not key_matches(b"", keys)
    assert "c-key" not in repr(Settings(cache_dir=tmp_path, api_keys="c-key"))  # a SecretStr


def test_keys_are_never_logged(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with _client(Settings(cache_dir=tmp_path, api_keys=KEY, log_bodies=True)) as client:
        _wait_ready(client)
        client.post("/reward", json=ITEM, headers={"Authorization": f"Bearer {KEY}"})
        client.post("/reward", json=ITEM, headers={"Authorization": "Bearer wrong-key-x"})
    assert KEY not in caplog.text and "wrong-key-x" not in caplog.text


# --- limits: each a 413 naming the limit and its value


def test_body_over_the_limit_is_413_before_parsing(tmp_path):
    with _client(Settings(cache_dir=tmp_path, max_body_bytes=4096)) as client:
        _wait_ready(client)
        # Declared too large: refused from the Content-Length alone (this body is not even JSON).
        error = _assert_error_shape(
            client.post("/reward", content=b"x" * 5000, headers={"content-type": "application/json"}),
            413,
            "body_too_large",
        )
        assert "4096" in error["message"] and "FLIP_MAX_BODY_BYTES" in error["message"]
        # Streamed without a length (chunked): counted as it arrives.
        chunks = iter([b'{"prompt": "' + b"p" * 3000, b"p" * 3000 + b'", "response": "x"}'])
        response = client.post("/reward", content=chunks, headers={"content-type": "application/json"})
        _assert_error_shape(response, 413, "body_too_large")
        assert client.post("/reward", json=ITEM).status_code == 200


@pytest.fixture
def limited(tmp_path):
    with _client(Settings(cache_dir=tmp_path, max_field_chars=100, max_messages=3, max_batch_items=4)) as client:
        _wait_ready(client)
        yield client


@pytest.mark.parametrize(
    "path,payload,type_,field,numbers",
    [
        ("/reward", {"prompt": "p" * 101, "response": "x"}, "field_too_long", "prompt", ("101", "100")),
        ("/reward", {"prompt": "p", "response": "r" * 500}, "field_too_long", "response", ("500", "100")),
        (
            "/reward",
            {"messages": [{"role": "user", "content": "q"}] * 4, "response": "x"},
            "too_many_messages",
            "messages",
            ("4", "3"),
        ),
        (
            "/reward",
            {"messages": [{"role": "user", "content": "q" * 101}], "response": "x"},
            "field_too_long",
            "messages[0].content",
            ("101", "100"),
        ),
        (
            "/batch_reward",
            {"items": [ITEM, {"prompt": "p", "response": "r" * 200}]},
            "field_too_long",
            "items[1].response",
            ("200", "100"),
        ),
        ("/batch_reward", {"items": [ITEM] * 5}, "too_many_items", "items", ("5", "4")),
    ],
)
def test_client_controlled_sizes_have_limits(limited, path, payload, type_, field, numbers):
    error = _assert_error_shape(limited.post(path, json=payload), 413, type_)
    assert error["field"] == field
    assert all(n in error["message"] for n in numbers) and "FLIP_MAX_" in error["message"]


def test_unpaired_surrogates_are_422_not_500(client):
    for raw in (b'{"prompt": "p\\ud800", "response": "x"}', b'{"id": "\\udfff", "prompt": "p", "response": "x"}'):
        response = client.post("/reward", content=raw, headers={"content-type": "application/json"})
        error = _assert_error_shape(response, 422, "validation_error")
        assert "surrogate" in error["message"]


def test_the_default_limits_refuse_huge_batches_strings_and_conversations(tmp_path):
    with _client(Settings(cache_dir=tmp_path)) as client:
        _wait_ready(client)
        items = {"items": [{"prompt": "p", "response": "r"}] * 10_000}
        _assert_error_shape(client.post("/batch_reward", json=items), 413, "too_many_items")
        megabyte = {"prompt": "p", "response": "ab " * 350_000}
        _assert_error_shape(client.post("/reward", json=megabyte), 413, "field_too_long")
        conversation = {"messages": [{"role": "user", "content": "hi"}] * 65, "response": "x"}
        _assert_error_shape(client.post("/reward", json=conversation), 413, "too_many_messages")


# --- one error shape for everything

BROKEN_BODIES = [
    # (name, path, raw body, status, error type); the real server's transport-level refusals are in
    # tests/integration/test_bad_inputs.py
    ("invalid JSON", "/reward", b'{"prompt": "p", "response": ', 422, "validation_error"),
    ("not an object", "/reward", b'["prompt", "response"]', 422, "validation_error"),
    ("wrong type: items", "/batch_reward", b'{"items": "all of them"}', 422, "validation_error"),
    ("null body", "/reward", b"null", 422, "validation_error"),
    ("empty body", "/reward", b"", 422, "validation_error"),
    ("deeply nested JSON", "/reward", b"[" * 100_000 + b"]" * 100_000, 400, "bad_request"),
    (
        "nested value in a field",
        "/reward",
        b'{"prompt": ' + b"[" * 500 + b"]" * 500 + b', "response": "x"}',
        422,
        "validation_error",
    ),
    ("non-UTF-8 bytes", "/reward", b'{"prompt": "caf\xe9 \xff\xfe", "response": "x"}', 400, "bad_request"),
    ("non-UTF-8 start", "/reward", b"\xff\xfe{", 400, "bad_request"),
]


@pytest.mark.parametrize("name,path,body,status,type_", BROKEN_BODIES, ids=[c[0] for c in BROKEN_BODIES])
def test_a_broken_body_gets_its_status_and_the_one_shape(client, name, path, body, status, type_):
    headers = {"content-type": "application/json", "X-Request-ID": f"bad-{name}"}
    response = client.post(path, content=body, headers=headers)
    error = _assert_error_shape(response, status, type_)
    assert error["message"] and error["request_id"] == f"bad-{name}"
    assert "Traceback" not in response.text and "/flip_reward/" not in response.text and ".py" not in response.text


def test_every_error_has_the_one_shape_and_no_internals(client):
    _assert_error_shape(client.get("/no-such-route"), 404, "not_found")
    _assert_error_shape(client.get("/reward"), 405, "method_not_allowed")
    _assert_error_shape(client.delete("/ready"), 405, "method_not_allowed")


def test_unexpected_failure_is_500_without_internals(tmp_path):
    settings = Settings(cache_dir=tmp_path)
    service = FlipService(settings, engine_factory=lambda s: FakeEngine(), embedder_factory=lambda s: HashEmbedder())
    with TestClient(create_app(settings, service), raise_server_exceptions=False) as client:
        _wait_ready(client)

        async def broken_embedder(*args, **kwargs):  # a failure outside the per-item path
            raise KeyError("secret detail in /srv/app/internal.py")

        service.scorer.embedder.aencode = broken_embedder
        response = client.post("/reward", json={**ITEM, "method": "generate"})
        _assert_error_shape(response, 500, "internal_error")
        assert "secret" not in response.text and ".py" not in response.text and "Traceback" not in response.text


# --- engine watchdog


class _Probe:
    def __init__(self, outstanding: int, last_progress_at: float, healthy: bool = True) -> None:
        self.outstanding_requests, self.last_progress_at, self.healthy = outstanding, last_progress_at, healthy
        self.failed: str | None = None

    def is_alive(self) -> bool:
        return self.healthy

    def mark_failed(self, reason: str) -> None:
        self.failed = reason


def test_diagnose_dead_hung_busy_and_idle():
    now = 1000.0
    assert "died" in diagnose(_Probe(0, now, healthy=False), stall_s=10, now=now)
    assert "hung" in diagnose(_Probe(3, now - 11, healthy=True), stall_s=10, now=now)
    assert diagnose(_Probe(3, now - 9), stall_s=10, now=now) is None  # busy, still within the limit
    assert diagnose(_Probe(0, now - 500), stall_s=10, now=now) is None  # idle is not hung


async def test_watch_fails_the_engine_and_reports_once():
    probe, reasons = _Probe(2, time.monotonic() - 60), []
    reason = await asyncio.wait_for(watch(probe, reasons.append, interval_s=0.01, stall_s=1), 2)
    assert "hung" in reason and probe.failed == reason and reasons == [reason]


def test_hung_engine_gives_503_fast_and_not_ready(tmp_path):
    engine = FakeEngine()
    settings = Settings(cache_dir=tmp_path, watchdog_interval_s=0.05, engine_stall_s=0.3)
    failures: list[str] = []
    with _client(settings, engine) as client:
        _wait_ready(client)
        client.app.state.service.on_engine_failure = failures.append
        engine.stuck = True
        started = time.monotonic()
        response = client.post("/reward", json={**ITEM, "method": "generate"})
        error = _assert_error_shape(response, 503, "engine_unavailable")
        assert time.monotonic() - started < 5
        assert "hung" in error["message"] and response.headers["retry-after"]
        ready = client.get("/ready")
        assert ready.status_code == 503 and "exiting" in ready.json()["reason"]
        assert failures and "hung" in failures[0]
        _assert_error_shape(client.post("/reward", json=ITEM), 503, "not_ready")


# --- logs


def test_json_logs_carry_the_request_id(tmp_path):
    config = log_config("info", "json")
    stream = io.StringIO()
    config["handlers"]["default"]["stream"] = stream
    logging.config.dictConfig(config)
    try:
        token = request_id_var.set("req-42")
        logging.getLogger("flip_reward.test").info("scored %d items", 3)
        request_id_var.reset(token)
        line = json.loads(stream.getvalue().strip().splitlines()[-1])
        assert line["message"] == "scored 3 items" and line["request_id"] == "req-42" and line["level"] == "INFO"
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})


def test_bodies_are_logged_only_when_asked(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    marker = {"prompt": "Explain the marker-7731", "response": "marker-7731 is a word"}
    for log_bodies in (False, True):
        with _client(Settings(cache_dir=tmp_path, log_bodies=log_bodies)) as client:
            _wait_ready(client)
            caplog.clear()
            assert client.post("/reward", json=marker).status_code == 200
            assert ("marker-7731" in caplog.text) is log_bodies


def test_loaded_models_are_frozen_out_of_the_collector_and_young_collections_are_rarer(client):
    import gc

    from flip_reward.service import YOUNG_COLLECTION_EVERY

    assert gc.get_freeze_count() > 0  # the models' objects, left out of every collection
    assert gc.get_threshold()[0] == YOUNG_COLLECTION_EVERY
