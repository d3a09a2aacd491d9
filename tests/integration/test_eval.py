"""`flip-reward eval` end to end against the real service: 20 pairwise rows, 8 reconstruction rows
(each with 2 + 7 probe items), the default method, one generate variant, the judge and the baselines."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.conftest import ROOT, SAMPLES

pytestmark = pytest.mark.integration


def test_eval_cli_on_20_rows(server, tmp_path):
    out = tmp_path / "eval"
    pairs, recon = tmp_path / "pairs.jsonl", tmp_path / "recon.jsonl"
    pairs.write_text("".join((SAMPLES / "autoj_pairwise_64.jsonl").read_text().splitlines(keepends=True)[:20]))
    recon.write_text(
        "".join((SAMPLES / "selfinstruct_reconstruction_64.jsonl").read_text().splitlines(keepends=True)[:8])
    )
    command = [
        sys.executable,
        "-m",
        "flip_reward.cli",
        "eval",
        str(pairs),
        str(recon),
        "--url",
        server.url,
        "--modes",
        "direct",
        "--out",
        str(out),
        "--quiet",
        "--methods",
        "default",
        "generate-direct-hybrid",
        "judge",
        "length",
        "random",
        "relevance",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    pairs = results["pairs"]["methods"]
    for name in (
        "likelihood (default)",
        "generate-direct-hybrid",
        "llm-judge (1-10)",
        "length (longer wins)",
        "relevance (no LM)",
    ):
        accuracy = pairs[name]["accuracy"]
        assert accuracy["n"] == 20 and 0.0 <= accuracy["ci95"][0] <= accuracy["value"] <= accuracy["ci95"][1] <= 1.0
    # 14 of the 20 pairs favour the longer answer, 6 the shorter: balanced, "longer wins" is 0.5
    balanced = pairs["length (longer wins)"]["length_balanced"]
    assert balanced["n"] == 20 and balanced["value"] == 0.5
    probes = results["recon"]["methods"]["likelihood (default)"]["probes"]
    # the keyword-stuffing guard zeroes stuffed responses (0.03 vs 0.49 honest on 80 rows, README)
    stuffing = probes["keyword_stuffing"]
    assert stuffing["mean_probe_reward"] < stuffing["mean_honest_reward"]
    report = (out / "report.md").read_text()
    assert "Pairwise accuracy" in report and "restate" in report
    assert (out / "accuracy_by_method.png").stat().st_size > 1000
