"""POST /verify and /seed_session (NeMo Gym's resources-server shapes) with a test-double engine:
reading the Responses request and object, the reply's shape, and the serving path's errors."""

import pytest
from fastapi.testclient import TestClient

from flip_reward.api.nemo_gym import gym_messages, gym_response_text
from flip_reward.config import Settings
from flip_reward.main import create_app
from flip_reward.service import FlipService
from tests.fakes import FakeEngine, HashEmbedder
from tests.unit.conftest import _wait_ready

INSTRUCTION = "Explain why the sky is blue"


def gym_body(input_, text: str | None, **row) -> dict:
    output = [] if text is None else [message(text)]
    return {"responses_create_params": {"input": input_}, "response": {"id": "resp_1", "output": output}, **row}


def message(text: str) -> dict:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def test_messages_from_a_responses_request():
    params = {
        "instructions": "Be terse.",
        "input": [
            {"role": "developer", "content": "Answer in English."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
            {"role": "assistant", "content": "Hello!"},
            {"type": "function_call", "name": "f", "arguments": "{}", "call_id": "c1"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
            {"role": "user", "content": INSTRUCTION},
        ],
    }
    assert gym_messages(params) == [
        {"role": "system", "content": "Be terse."},
        {"role": "system", "content": "Answer in English."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": INSTRUCTION},
    ]
    assert gym_messages({"input": INSTRUCTION}) == [{"role": "user", "content": INSTRUCTION}]
    assert gym_messages({"input": [{"role": "assistant", "content": "x"}]}) is None


def test_response_text_is_the_last_message_item():
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "hm"}]}
    call = {"type": "function_call", "name": "f", "arguments": "{}", "call_id": "c1"}
    assert gym_response_text({"output": [reasoning, message("first"), call, message("final")]}) == "final"
    assert gym_response_text({"output": [reasoning]}) == ""


def test_verify_echoes_the_row_with_reward_and_extra_logs(client):
    body = gym_body([{"role": "user", "content": INSTRUCTION}], "Blue light scatters most.", task_id="t1")
    got = client.post("/verify", json=body)
    assert got.status_code == 200
    reply = got.json()
    assert reply["task_id"] == "t1" and reply["response"] == body["response"]
    assert reply["responses_create_params"] == body["responses_create_params"]
    assert isinstance(reply["reward"], float) and reply["flip_unscorable"] == 0.0
    assert reply["flip_unscorable_reason"] == "" and "reward_components" not in reply
    expected = client.post("/reward", json={"prompt": INSTRUCTION, "response": "Blue light scatters most."}).json()
    assert reply["reward"] == expected["reward"]


def test_verify_empty_output_gets_the_floor_with_its_reason(client):
    reply = client.post("/verify", json=gym_body(INSTRUCTION, None)).json()
    assert reply["reward"] == 0.0 and reply["flip_unscorable"] == 1.0
    assert reply["flip_unscorable_reason"] == "empty_response"


@pytest.mark.parametrize(
    "body,field",
    [
        (gym_body([{"role": "assistant", "content": "x"}], "y"), "responses_create_params.input"),
        ({"responses_create_params": {"input": INSTRUCTION}, "response": {"output": "text"}}, "response.output"),
        ({"response": {"output": []}}, "responses_create_params"),
    ],
)
def test_verify_unreadable_rows_are_422_naming_the_field(client, body, field):
    got = client.post("/verify", json=body)
    assert got.status_code == 422 and got.json()["error"]["field"] == field


def test_verify_engine_failure_is_a_503_never_a_zero(client, fake_engine):
    fake_engine.healthy = False
    got = client.post("/verify", json=gym_body(INSTRUCTION, "Blue light scatters."))
    assert got.status_code == 503 and "reward" not in got.json()


def test_seed_session_and_verify_need_the_key_when_keys_are_set(tmp_path):
    settings = Settings(cache_dir=tmp_path, api_keys="k1", max_tokens=32, method="generate")
    service = FlipService(settings, engine_factory=lambda s: FakeEngine(), embedder_factory=lambda s: HashEmbedder())
    with TestClient(create_app(settings, service)) as keyed:
        _wait_ready(keyed)
        assert keyed.post("/seed_session", json={}).status_code == 401
        assert keyed.post("/verify", json=gym_body(INSTRUCTION, "x")).status_code == 401
        auth = {"Authorization": "Bearer k1"}
        assert keyed.post("/seed_session", json={"responses_create_params": {}}, headers=auth).json() == {}
        assert keyed.post("/verify", json=gym_body(INSTRUCTION, "Blue."), headers=auth).status_code == 200


def test_verify_over_the_field_limit_is_413(tmp_path):
    settings = Settings(cache_dir=tmp_path, max_tokens=32, method="generate", max_field_chars=50)
    service = FlipService(settings, engine_factory=lambda s: FakeEngine(), embedder_factory=lambda s: HashEmbedder())
    with TestClient(create_app(settings, service)) as client:
        _wait_ready(client)
        got = client.post("/verify", json=gym_body(INSTRUCTION, "x" * 51))
        assert got.status_code == 413
