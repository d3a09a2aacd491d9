"""The HTTP layer with a test-double engine: shapes, order, errors and status codes."""

import pytest

ITEM = {"prompt": "Explain why the sky is blue", "response": "the sky looks blue because of Rayleigh scattering"}


def test_reward_returns_reward_and_details(client):
    body = client.post("/reward", json={**ITEM, "id": "x1", "details": True}).json()
    assert body["id"] == "x1"
    assert 0.0 <= body["reward"] <= 1.0
    assert body["inferred_instruction"].startswith("Explain the sky looks blue")
    assert body["method"] == "generate" and body["copied_fraction"] == 0.0
    assert set(body["similarities"]) == {"f1", "embedding", "hybrid"}
    assert body["reward"] == pytest.approx(body["similarities"]["hybrid"])
    assert body["parsed"] is True and body["truncated"] is False
    assert body["usage"]["prompt_tokens"] > 0 and body["raw_output"]
    assert body["model"] == "fake-model" and body["prompt_version"]


def test_similarity_choice_per_request(client):
    for name in ("f1", "embedding", "hybrid"):
        body = client.post("/reward", json={**ITEM, "similarity": name}).json()
        assert body["similarity"] == name
        assert body["reward"] == pytest.approx(body["similarities"][name])


def test_messages_form_uses_last_user_turn(client, fake_engine):
    messages = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi! What can I do?"},
        {"role": "user", "content": "Explain why the sky is blue"},
    ]
    body = client.post("/reward", json={"messages": messages, "response": ITEM["response"]}).json()
    assert body["reward"] is not None
    prompt_text = fake_engine.tokenizer.decode(fake_engine.calls[-1])
    assert "User: Hello" in prompt_text  # earlier turns shown as context


def test_batch_keeps_order_and_matches_single(client):
    items = [{"id": str(i), "prompt": f"Describe item {i}", "response": f"item {i} is number {i}"} for i in range(6)]
    batch = client.post("/batch_reward", json={"items": items}).json()
    assert [r["id"] for r in batch["results"]] == [str(i) for i in range(6)]
    singles = [client.post("/reward", json=item).json()["reward"] for item in items]
    assert batch["rewards"] == pytest.approx(singles)


@pytest.mark.parametrize(
    "payload,field",
    [
        ({"prompt": "   ", "response": "x"}, "prompt"),
        ({"prompt": "p", "response": 5}, "response"),
        ({"prompt": "p", "response": ["x"]}, "response"),
        ({"prompt": {"a": 1}, "response": "x"}, "prompt"),
        ({"prompt": "p"}, "response"),
        ({"response": "x"}, "body"),
        ({"prompt": "p", "messages": [{"role": "user", "content": "q"}], "response": "x"}, "body"),
        ({"messages": [{"role": "assistant", "content": "q"}], "response": "x"}, "body"),
        ({"messages": [{"role": "wizard", "content": "q"}], "response": "x"}, "messages[0].role"),
        ({"prompt": "p", "response": "x", "similarity": "cosine"}, "similarity"),
        ({"prompt": "p", "response": "x", "surprise": 1}, "surprise"),
    ],
)
def test_bad_reward_input_is_422_naming_the_field(client, payload, field):
    response = client.post("/reward", json=payload)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "validation_error"
    assert error["field"] == field
    assert field in error["message"]


def test_bad_batch_item_names_its_index(client):
    items = [ITEM, ITEM, {"prompt": " ", "response": "x"}]
    error = client.post("/batch_reward", json={"items": items}).json()["error"]
    assert error["field"] == "items[2].prompt"
    response = client.post("/batch_reward", json={"items": [ITEM, {"prompt": "p"}]})
    assert response.status_code == 422 and response.json()["error"]["field"] == "items[1].response"


def test_too_many_items_is_413(client):
    response = client.post("/batch_reward", json={"items": [ITEM] * 9})
    assert response.status_code == 413
    assert "8" in response.json()["error"]["message"]


def test_empty_batch_is_422(client):
    assert client.post("/batch_reward", json={"items": []}).status_code == 422


def test_long_response_is_truncated_not_500(client, fake_engine):
    long_response = " ".join(f"w{i}" for i in range(2000))
    body = client.post("/reward", json={"prompt": "Explain w0", "response": long_response}).json()
    assert body["truncated"] is True and body["reward"] is not None
    assert len(fake_engine.calls[-1]) <= fake_engine.max_model_len - 32


def test_long_context_drops_oldest_turns(client, fake_engine):
    old = [{"role": "user", "content": "old " * 600}, {"role": "assistant", "content": "reply " * 10}]
    messages = old + [{"role": "user", "content": "Explain the sky"}]
    body = client.post("/reward", json={"messages": messages, "response": "the sky is blue"}).json()
    assert body["truncated"] is True and body["reward"] is not None
    assert "old" not in fake_engine.tokenizer.decode(fake_engine.calls[-1])


@pytest.mark.parametrize(
    "response,reason",
    [
        ("", "empty_response"),
        ("   \n", "empty_response"),
        ("<think>just thinking</think>", "think_only"),
        ("<think>cut off in the middle of", "think_only"),
        ("Explain the sky. Explain the sky.", "all_copied"),
    ],
)
def test_a_response_with_nothing_to_score_gets_the_floor_with_its_reason(client, fake_engine, response, reason):
    calls = len(fake_engine.calls)
    body = client.post("/reward", json={"prompt": "Explain the sky.", "response": response}).json()
    assert (body["reward"], body["unscorable"], body["guard"]) == (0.0, reason, "unscorable")
    assert body["error"] is None and body["code"] is None
    assert len(fake_engine.calls) == calls  # nothing went to the engine
    text = client.get("/metrics").text
    assert f'flip_unscorable_total{{method="generate",reason="{reason}",route="/reward"}}' in text
    assert 'flip_guard_triggers_total{guard="unscorable",method="generate",route="/reward"}' in text


def test_engine_failure_on_one_item_is_null_not_zero(client, fake_engine):
    def flaky(prompt):
        if "BOOM" in prompt:
            raise RuntimeError("kaput")
        return '{"INFERRED INSTRUCTION": "Explain things"}'

    fake_engine.reply = flaky
    items = [{"prompt": "Explain things", "response": "fine"}, {"prompt": "Explain", "response": "BOOM"}]
    body = client.post("/batch_reward", json={"items": items}).json()
    assert body["rewards"][0] is not None
    assert body["rewards"][1] is None and "engine error" in body["results"][1]["error"]
    assert body["results"][1]["code"] == "engine_error" and body["results"][1]["unscorable"] is None
    text = client.get("/metrics").text
    assert 'flip_item_errors_total{code="engine_error",method="generate",route="/batch_reward"}' in text


def test_dead_engine_gives_503_and_not_ready(client, fake_engine):
    fake_engine.healthy = False
    response = client.post("/reward", json=ITEM)
    assert response.status_code == 503
    assert client.get("/ready").status_code == 503
    assert client.get("/health").status_code == 200


def test_request_id_is_echoed_in_header_and_error(client):
    response = client.post("/reward", json={"prompt": " "}, headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert response.json()["error"]["request_id"] == "abc-123"


def test_info_reports_prompt_version_and_models(client):
    info = client.get("/info").json()
    assert info["prompt_version"].startswith("flip-prompts-v")
    assert info["similarity"] in info["similarities"]
    assert info["method"] in info["methods"] and info["copy_guard"]["on"] is True
    assert len(info["likelihood"]["distractor_instructions"]) == info["likelihood"]["distractors"]
    assert info["limits"]["max_batch_items"] == 8


def test_metrics_count_requests(client):
    client.post("/reward", json=ITEM)
    text = client.get("/metrics").text
    assert 'flip_requests_total{route="/reward",status="200"}' in text
    assert "flip_reward_bucket" in text
