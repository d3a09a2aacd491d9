"""The eval harness: metrics on hand-made numbers with known answers, and a whole run through the
API with the test-double engine (the real-engine run is in tests/integration/test_eval.py)."""

import json

import httpx
import pytest

from flip_reward.client import AsyncFlipClient
from flip_reward.evaluation import datasets, metrics, report, runner


def test_pairwise_accuracy_counts_ties_and_missing_as_half():
    outcomes = metrics.pair_outcomes([0.9, 0.1, 0.5, None], [0.1, 0.9, 0.5, 0.3])
    assert outcomes.tolist() == [1.0, 0.0, 0.5, 0.5]
    assert metrics.pairwise_accuracy([0.9, 0.1, 0.5, None], [0.1, 0.9, 0.5, 0.3]).value == pytest.approx(0.5)


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_n():
    small = metrics.bootstrap_mean([1, 0] * 10)
    large = metrics.bootstrap_mean([1, 0] * 500)
    assert small.low < 0.5 < small.high and large.low < 0.5 < large.high
    assert (large.high - large.low) < (small.high - small.low)
    assert metrics.bootstrap_mean([1, 1, 1]).as_dict() == {"value": 1.0, "ci95": [1.0, 1.0], "n": 3}


def test_best_of_n_picks_first_of_ties_and_compares_with_random_and_oracle():
    result = metrics.best_of_n(scores=[[0.2, 0.9, 0.9], [0.5, None, 0.1]], quality=[[1, 3, 2], [2, 5, 1]])
    assert result["top1_quality"] == pytest.approx((3 + 2) / 2)  # index 1 (first of the tie), then index 0
    assert result["random_quality"] == pytest.approx((2 + 8 / 3) / 2)
    assert result["oracle_quality"] == pytest.approx(4)


def test_best_of_4_needs_chosen_above_all_three():
    est = metrics.best_of_4_accuracy([0.9, 0.5], [[0.1, 0.2, 0.3], [0.1, 0.6, 0.2]])
    assert est.value == 0.5


def test_length_balanced_accuracy_gives_longer_wins_exactly_half():
    # 9 pairs where the chosen answer is longer, 3 where it is shorter (and 1 equal, in neither group)
    assert metrics.pairwise_accuracy([1] * 9 + [0] * 3 + [0.5], [0.5] * 13).value == pytest.approx(9.5 / 13)
    est = metrics.length_balanced_accuracy([1.0] * 9, [0.0] * 3)  # longer wins
    assert est.value == 0.5 and est.n == 12
    # a method right on 2 of 3 shorter-chosen pairs and 6 of 9 longer-chosen ones: (2/3 + 2/3) / 2
    est = metrics.length_balanced_accuracy([1.0] * 6 + [0.0] * 3, [1.0, 1.0, 0.0])
    assert est.value == pytest.approx(2 / 3) and est.low < est.value < est.high
    assert metrics.length_balanced_accuracy([1.0, 0.0], []).n == 0  # no shorter-chosen pair: undefined
    one = metrics.length_balanced_accuracy([1.0], [0.0, 1.0, 0.5])  # a group of one
    assert one.value == pytest.approx((1.0 + 0.5) / 2) and one.low == one.high == one.value


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


async def test_eval_run_through_the_api(tmp_path, client):
    pairwise = _write(
        tmp_path / "pairs.jsonl",
        [
            {
                "id": f"p{i}",
                "prompt": f"Explain topic {i} clearly",
                "subset": "s",
                "chosen": f"topic {i} explained clearly with care",
                "rejected": "no",
            }
            for i in range(6)
        ],
    )
    recon = _write(
        tmp_path / "recon.jsonl",
        [
            {"id": f"r{i}", "instruction": f"Describe the colour number {i}", "response": f"colour {i} is warm"}
            for i in range(4)
        ],
    )
    data = [datasets.load(pairwise), datasets.load(recon)]
    transport = httpx.ASGITransport(app=client.app)
    async with AsyncFlipClient("http://test", transport=transport, chunk_size=8) as api:
        specs = [s for s in runner.lm_methods(("direct",)) if "judge" not in s.name] + runner.BASELINES[:2]
        results = await runner.run_files(api, data, specs, progress=False)
    assert results["pairs"]["kind"] == "pairwise"
    length = results["pairs"]["methods"]["length (longer wins)"]["accuracy"]
    assert length["value"] == 1.0 and length["n"] == 6
    split = results["pairs"]["methods"]["length (longer wins)"]["by_relative_length"]
    assert split["chosen longer"]["n"] == 6 and split["chosen longer"]["value"] == 1.0
    assert split["chosen shorter"]["n"] == 0
    assert results["pairs"]["methods"]["length (longer wins)"]["length_balanced"]["n"] == 0
    probes = results["recon"]["methods"]["likelihood (default)"]["probes"]
    assert probes["restate"]["honest_wins"]["value"] == 1.0  # the guard: a restatement earns nothing
    files = report.write(results, tmp_path / "out", "header", highlight="likelihood (default)")
    markdown = files["markdown"].read_text()
    assert "| length (longer wins) |" in markdown and "chosen shorter (n=0)" in markdown
    assert "length-balanced |" in markdown
    assert files["accuracy_by_method"].stat().st_size > 0


def test_dataset_kind_detection_and_seeded_sample(tmp_path):
    path = _write(tmp_path / "x.jsonl", [{"id": i, "instruction": "a", "response": "b"} for i in range(10)])
    first, second = datasets.load(path, limit=4, seed=1), datasets.load(path, limit=4, seed=1)
    assert first.kind == "reconstruction" and [r["id"] for r in first.rows] == [r["id"] for r in second.rows]
    with pytest.raises(ValueError):
        datasets.detect_kind({"foo": 1})
