"""bench/front_ceiling.py refuses a run whose phases would reuse items within one front: a repeated
item hits the front's caches (instruction embeddings, likelihood baselines) and flatters that phase."""

from types import SimpleNamespace

import pytest

from bench.front_ceiling import WARM_UP, run_all


def test_phases_that_would_repeat_items_are_refused_before_any_front_starts():
    pairs = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(WARM_UP + 21 * 8)]
    args = SimpleNamespace(items=8 * 8 + 8, rounds=1, batch_size=256)
    with pytest.raises(SystemExit, match=r"use --items 64 or fewer"):
        run_all([("after", ".", 1)], ["likelihood"], pairs, args)
