"""The likelihood and judge methods and the copy guard, through the API with test doubles."""

import math

import pytest

from flip_reward.scoring.parse import parse_judge_score

INSTRUCTION = "Write a short poem about the autumn rain in the city"


@pytest.mark.parametrize(
    "raw,score",
    [
        ("8", 8),
        ("Rating: 7/10", 7),
        ("**9** out of 10", 9),
        ("10", 10),
        ("I'd say 6.", 6),
        ("score 0", None),
        ("none", None),
        ("3.5", None),
        ("<think>5?</think>4", 4),
    ],
)
def test_judge_score_parser(raw, score):
    assert parse_judge_score(raw) == score


def _reward(client, response, **options):
    body = client.post("/reward", json={"prompt": INSTRUCTION, "response": response, **options})
    assert body.status_code == 200, body.text
    return body.json()


def test_likelihood_method_reports_logprobs(client):
    body = _reward(client, "Grey drops drum on tin roofs across the city", method="likelihood")
    assert body["method"] == "likelihood"
    assert body["inferred_instruction"] is None
    lik = body["likelihood"]
    assert lik["scored_tokens"] > 0 and lik["pmi"] == pytest.approx(lik["conditional"] - lik["unconditional"])
    assert 0.0 < body["reward"] < 1.0
    # the fake model reads new words at -3 and repeats at -0.1: the mean over the response's tokens
    assert -3.0 <= lik["response_fluency"] < 0.0 and lik["keyword_stuffing"] is None


def test_restating_the_instruction_earns_nothing_under_the_guard(client):
    honest = _reward(client, "Grey drops drum on tin roofs across the city", method="likelihood")
    restated = _reward(client, "Sure! Here is my answer to your request: " + INSTRUCTION, method="likelihood")
    assert restated["copied_fraction"] > 0.5 and restated["reward"] < honest["reward"]


def test_distractors_are_scored_after_the_same_response_from_the_prefix_cache(client, fake_engine):
    from flip_reward.scoring.prompts import DISTRACTOR_INSTRUCTIONS

    response = "Grey drops drum on tin roofs across the city"
    first = len(fake_engine.calls)
    body = _reward(client, response, method="likelihood", distractors=2)
    lik = body["likelihood"]
    assert lik["contrast"] == pytest.approx(lik["pmi"] - lik["distractor_score"])
    assert body["reward"] == pytest.approx(1 / (1 + math.exp(-lik["contrast"])))
    calls, hints = fake_engine.calls[first:], fake_engine.scored_from[first:]
    words = [
        " ".join(fake_engine.tokenizer.decode(c).split()[-len(d.split()) :])
        for c, d in zip(calls[-2:], DISTRACTOR_INSTRUCTIONS)
    ]
    assert words == list(DISTRACTOR_INSTRUCTIONS[:2])
    # the two distractor prompts: the real prompt's head, then the distractor; only the tail is scored
    decoded = [fake_engine.tokenizer.decode(c) for c in calls]
    k = next(k for k, text in enumerate(decoded) if "Grey" in text and text.rstrip().endswith("city"))
    real, head = calls[k], len(calls[k]) - len(fake_engine.tokenizer.encode(INSTRUCTION))
    assert hints[-2:] == [head, head] and all(c[:head] == real[:head] for c in calls[-2:])
    # the real prompt is scored from the response on (the stuffing guard reads the response's tokens)
    assert 0 < hints[k] < head and fake_engine.tokenizer.decode(real[hints[k] :]).startswith("Grey")
    plain = _reward(client, response, method="likelihood", distractors=0)["likelihood"]
    assert plain["contrast"] is None and plain["distractor_score"] is None


def test_distractors_out_of_range_is_a_422_naming_the_field(client):
    body = client.post("/reward", json={"prompt": INSTRUCTION, "response": "x", "distractors": 9})
    assert body.status_code == 422 and "distractors" in body.text


def test_copied_passages_do_not_count_but_the_rest_of_the_response_does(client):
    honest = "Grey drops drum on tin roofs across the city"
    alone = _reward(client, honest, method="likelihood")
    quoted = _reward(client, "You asked me to write a short poem about the autumn rain. " + honest, method="likelihood")
    assert quoted["copied_fraction"] > 0.3 and alone["copied_fraction"] == 0.0
    # the pasted instruction is deleted before scoring: nothing gained from it
    assert quoted["reward"] <= alone["reward"] + 0.05


def test_without_the_guard_the_copying_model_prefers_the_restatement(settings, fake_engine):
    from fastapi.testclient import TestClient

    from flip_reward.main import create_app
    from flip_reward.service import FlipService
    from tests.fakes import HashEmbedder
    from tests.unit.conftest import _wait_ready

    unguarded = settings.model_copy(update={"copy_guard": False})
    service = FlipService(unguarded, engine_factory=lambda s: fake_engine, embedder_factory=lambda s: HashEmbedder())
    with TestClient(create_app(unguarded, service)) as client:
        _wait_ready(client)
        honest = _reward(client, "Grey drops drum on tin roofs across the city", method="likelihood")
        restated = _reward(client, "Sure! Here is my answer to your request: " + INSTRUCTION, method="likelihood")
    assert restated["reward"] > honest["reward"]


def test_a_response_that_only_copies_scores_zero_without_reaching_the_engine(client, fake_engine):
    calls = len(fake_engine.calls)
    for method in ("generate", "likelihood"):
        body = _reward(client, INSTRUCTION + ".", method=method)
        assert body["copied_fraction"] == 1.0 and body["reward"] == 0.0 and body["error"] is None
    assert len(fake_engine.calls) == calls


def test_judge_method(client, fake_engine):
    fake_engine.reply = lambda prompt: "8"
    body = _reward(client, "Grey drops drum on tin roofs", method="judge")
    assert body["judge_score"] == 8 and body["reward"] == pytest.approx(7 / 9)
    fake_engine.reply = lambda prompt: "excellent!"
    body = _reward(client, "Grey drops drum on tin roofs", method="judge")
    assert body["reward"] is None and "no score" in body["error"]


def test_unknown_method_is_422(client):
    response = client.post("/reward", json={"prompt": "p", "response": "r", "method": "vibes"})
    assert response.status_code == 422 and response.json()["error"]["field"] == "method"
