"""/rank, /get_reward (OpenRLHF) and /slime_reward with a test-double engine: shapes and logic."""

import pytest

from flip_reward.api.rank import rank_order

CHATML = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


def test_rank_order_ties_and_nulls():
    assert rank_order([0.2, 0.9, None, 0.9, 0.1]) == [1, 3, 0, 4, 2]
    assert rank_order([None, None]) == [0, 1]


def test_rank_scores_all_responses_in_one_scorer_call(client):
    service = client.app.state.service
    calls = []
    original = service.scorer.score

    async def counting(items, options):
        calls.append(len(items))
        return await original(items, options)

    service.scorer.score = counting
    responses = ["why the sky is blue: Rayleigh scattering", "bananas are yellow", "the sky is blue because"]
    body = client.post("/rank", json={"prompt": "Explain why the sky is blue", "responses": responses}).json()
    assert calls == [3]
    assert len(body["rewards"]) == 3 and sorted(body["ranking"]) == [0, 1, 2]
    assert body["best_index"] == body["ranking"][0]
    assert body["rewards"][body["best_index"]] == max(body["rewards"])
    assert [r["id"] for r in body["results"]] == ["0", "1", "2"]


def test_rank_identical_responses_tie_to_lowest_index(client):
    body = client.post("/rank", json={"prompt": "Describe a cat", "responses": ["a cat purrs"] * 4}).json()
    assert body["ranking"] == [0, 1, 2, 3] and body["best_index"] == 0


@pytest.mark.parametrize(
    "payload,status,field",
    [
        ({"prompt": "p", "responses": []}, 422, "responses"),
        ({"prompt": "p", "responses": ["ok", 5]}, 422, "responses[1]"),
        ({"responses": ["x"]}, 422, "body"),
        ({"prompt": "p", "responses": ["x"] * 9}, 413, "responses"),  # the unit settings allow 8
    ],
)
def test_rank_bad_input(client, payload, status, field):
    response = client.post("/rank", json=payload)
    assert response.status_code == status
    assert response.json()["error"]["field"] == field


def test_openrlhf_batch_and_single(client):
    prompt = CHATML.format("Explain why the sky is blue")
    queries = [prompt + "why the sky is blue: light scatters<|im_end|>", prompt + "<|im_end|>"]
    body = client.post("/get_reward", json={"query": queries, "prompts": [prompt, prompt], "labels": [None, None]})
    body = body.json()
    # an EOS-only response: the floor with its reason, a number like every other
    assert body["rewards"][0] > 0 and body["rewards"][1] == 0.0 and body["unscorable"] == [None, "empty_response"]
    assert body["scores"] == body["rewards"]
    assert set(body["extra_logs"]) == {
        "flip_unscorable",
        "flip_guard",
        "flip_copied_fraction",
        "flip_truncated",
        "flip_f1",
        "flip_embedding",
        "flip_parsed",
    }
    assert all(len(v) == 2 and all(isinstance(x, float) for x in v) for v in body["extra_logs"].values())
    assert body["extra_logs"]["flip_unscorable"] == [0.0, 1.0] and body["extra_logs"]["flip_guard"] == [1.0, 3.0]
    # the response was recovered from the query; the copy guard deleted the instruction it repeats
    assert body["inferred_instructions"][0].endswith("light scatters")
    assert body["extra_logs"]["flip_copied_fraction"][0] > 0.5

    single = client.post("/get_reward", json={"query": queries[0], "prompts": prompt, "labels": "x"}).json()
    assert single["rewards"] == body["rewards"][:1]


def test_openrlhf_old_payload_query_only(client):
    query = CHATML.format("Explain why the sky is blue") + "why the sky is blue: light scatters<|im_end|>"
    body = client.post("/get_reward", json={"query": [query]}).json()
    assert body["rewards"][0] is not None


def test_openrlhf_instruction_from_label(client):
    query = "Q: what? A: why the sky is blue: light scatters</s>"
    body = client.post(
        "/get_reward?instruction_from=label",
        json={"query": [query], "prompts": ["Q: what? A:"], "labels": ["Explain why the sky is blue"]},
    )
    result = body.json()
    assert result["rewards"][0] > 0 and result["unscorable"] == [None]
    bad = client.post(
        "/get_reward?instruction_from=label", json={"query": [query], "prompts": ["Q"], "labels": [{"answer": 4}]}
    )
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "query[0]"
    assert "label" in bad.json()["error"]["message"]


@pytest.mark.parametrize(
    "payload,field",
    [
        ({"query": []}, "query"),
        ({"query": ["a", "b"], "prompts": ["a"]}, "prompts"),
        ({"query": ["a"], "labels": "x"}, "labels"),
        ({"prompts": ["a"]}, "query"),
    ],
)
def test_openrlhf_bad_payloads(client, payload, field):
    response = client.post("/get_reward", json=payload)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field


def test_slime_forms(client):
    text = client.post(
        "/slime_reward",
        json={
            "prompt": CHATML.format("Explain why the sky is blue"),
            "response": "why the sky is blue: light scatters<|im_end|>",
            "label": "4",
        },
    ).json()
    messages = client.post(
        "/slime_reward",
        json={
            "prompt": [{"role": "user", "content": "Explain why the sky is blue"}],
            "response": "why the sky is blue: light scatters",
            "label": None,
        },
    ).json()
    assert text["reward"] is not None and text["reward"] == messages["reward"]
    empty = client.post("/slime_reward", json={"prompt": "Explain", "response": "  <|im_end|>", "label": None}).json()
    assert (empty["reward"], empty["unscorable"], empty["error"]) == (0.0, "empty_response", None)
    assert empty["extra_logs"]["flip_unscorable"] == 1.0 and text["extra_logs"]["flip_unscorable"] == 0.0
    assert set(empty["extra_logs"]) == set(text["extra_logs"])


def test_trainer_routes_apply_the_field_limits(client):
    long = "word " * 30_000  # over the unit settings' FLIP_MAX_FIELD_CHARS of 100,000
    prompt = CHATML.format("Explain why the sky is blue")
    got = client.post("/get_reward", json={"query": [prompt + long], "prompts": [prompt]})
    assert got.status_code == 413 and got.json()["error"]["field"] == "query[0].response"
    got = client.post("/slime_reward", json={"prompt": prompt, "response": long})
    assert got.status_code == 413 and got.json()["error"]["type"] == "field_too_long"
    many = [{"role": "user", "content": "hi"}] * 65  # over FLIP_MAX_MESSAGES of 64
    got = client.post("/slime_reward", json={"prompt": many, "response": "ok"})
    assert got.status_code == 413 and got.json()["error"]["type"] == "too_many_messages"
    got = client.post("/rank", json={"prompt": "Explain", "responses": [long]})
    assert got.status_code == 413 and got.json()["error"]["field"] == "responses[0].response"


def test_a_trainer_route_fails_the_request_when_the_engine_fails_on_an_item(client, fake_engine):
    def flaky(prompt):
        if "BOOM" in prompt:
            raise RuntimeError("kaput")
        return '{"INFERRED INSTRUCTION": "Explain things"}'

    fake_engine.reply = flaky
    prompt = CHATML.format("Explain things")
    got = client.post("/get_reward", json={"query": [prompt + "fine", prompt + "BOOM"], "prompts": [prompt] * 2})
    assert got.status_code == 503 and got.headers["Retry-After"] == "5"
    assert got.json()["error"] == {**got.json()["error"], "type": "engine_error", "field": "query[1]"}
    got = client.post("/slime_reward", json={"prompt": prompt, "response": "BOOM"})
    assert got.status_code == 503 and got.json()["error"]["type"] == "engine_error"
