"""/rank, /get_reward (OpenRLHF) and /slime_reward with a test-double engine: shapes and logic."""

import pytest

from app.api.rank import rank_order

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
        ({"prompt": "p", "responses": ["ok", " "]}, 422, "responses[1]"),
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
    assert body["rewards"][0] is not None and body["rewards"][1] is None
    assert body["scores"] == body["rewards"]
    assert body["errors"][1] == "the response is empty"
    assert set(body["extra_logs"]) == {"flip_f1", "flip_embedding", "flip_pmi", "flip_copied_fraction", "flip_parsed", "flip_truncated"}
    assert all(len(v) == 2 for v in body["extra_logs"].values())
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
    body = client.post("/get_reward?instruction_from=label",
                       json={"query": [query], "prompts": ["Q: what? A:"], "labels": ["Explain why the sky is blue"]})
    result = body.json()
    assert result["rewards"][0] is not None and result["errors"] == [None]
    bad = client.post("/get_reward?instruction_from=label", json={"query": [query], "prompts": ["Q"],
                                                                  "labels": [{"answer": 4}]}).json()
    assert bad["rewards"] == [None] and "label" in bad["errors"][0]


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
    text = client.post("/slime_reward", json={
        "prompt": CHATML.format("Explain why the sky is blue"),
        "response": "why the sky is blue: light scatters<|im_end|>", "label": "4"}).json()
    messages = client.post("/slime_reward", json={
        "prompt": [{"role": "user", "content": "Explain why the sky is blue"}],
        "response": "why the sky is blue: light scatters", "label": None}).json()
    assert text["reward"] is not None and text["reward"] == messages["reward"]
    empty = client.post("/slime_reward", json={"prompt": "Explain", "response": "  ", "label": None}).json()
    assert empty["reward"] is None and empty["error"] == "the response is empty"
