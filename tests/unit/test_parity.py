"""bench/parity.py's verdict (the GPU kit's parity step): what counts as the same reward on another
machine. The scores themselves come from the real service (`bench/parity.py run`)."""

import copy

from bench.parity import ITEMS, METHODS, compare


def _scores(reward: float = 0.7, conditional: float = -2.0) -> dict:
    item = {"reward": reward, "code": None, "error": None, "unscorable": None, "conditional": conditional}
    return {"methods": {m: [dict(item) for _ in ITEMS] for m in METHODS}}


def test_bf16_sized_differences_pass():
    reference, candidate = _scores(), _scores(reward=0.72, conditional=-2.05)
    rows, failures = compare(reference, candidate)
    assert failures == [] and len(rows) == len(ITEMS) * len(METHODS)


def test_a_missing_reward_a_changed_outcome_and_a_drift_fail():
    reference = _scores()
    candidate = copy.deepcopy(reference)
    candidate["methods"]["likelihood"][0].update(reward=None, code="unreadable_logprobs", error="engine error")
    candidate["methods"]["likelihood"][1]["reward"] = 0.4  # a clear call on the other side
    candidate["methods"]["likelihood"][2]["conditional"] = -2.5  # 25 % off
    candidate["methods"]["generate"][3].update(unscorable="empty_response")
    _, failures = compare(reference, candidate)
    assert [f.split(":")[0] for f in failures] == [
        "likelihood item 0",
        "likelihood item 1",
        "likelihood item 2",
        "generate item 3",
    ]


def test_greedy_methods_are_not_held_to_a_reward_tolerance():
    reference, candidate = _scores(), _scores()
    for item in candidate["methods"]["generate"] + candidate["methods"]["judge"]:
        item["reward"] = 0.1  # another greedy text on bf16: printed, not failed
    candidate["methods"]["judge"][0].update(reward=None, code="judge_no_score")
    assert compare(reference, candidate)[1] == []


def test_other_weights_are_no_parity_result():
    reference, candidate = _scores(), _scores()
    reference["weights_sha256"], candidate["weights_sha256"] = "a" * 64, "b" * 64
    assert compare(reference, candidate)[1][0].startswith("the weights differ")
