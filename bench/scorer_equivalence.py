"""The scorer of an earlier revision against this tree's, on the real engine: the same items, the
rewards (and every other result field) compared. A refactoring check, not a speed benchmark.

    flock /tmp/flip-engine.lock .venv/bin/python bench/scorer_equivalence.py --against 81e5356 [--items 24]

Arms, each after the engine's prefix cache is emptied (so no arm reads another's prompts):
  old               flip_reward/scoring/scorer.py at --against, loaded from git
  new (one request) this tree, likelihood scored the way the old code did (every instruction in one
                    request, the real one from the response on): must equal old exactly
  new (prefill)     this tree, the response prefilled without logprobs and the instructions (and the
                    PMI baselines after their shared head) scored from the prefix cache: rewards
                    within --tolerance of old
  generate, judge   old and this tree on the first --generate-items items: must be equal exactly
Prints a table and exits 1 on any difference past the bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.throughput import load_pairs  # noqa: E402

# Responses the keyword-stuffing guard must see (its fluency comes from the one-request path), and
# ones only the copy guard touches.
_CRAFTED = [
    {
        "prompt": "Write a short poem about the autumn rain in the city",
        "response": "city rain autumn poem short write " * 3,
    },  # backwards: no run the copy guard deletes
    {
        "prompt": "Explain how a refrigerator keeps food cold",
        "response": "Sure! Here is my answer: explain how a refrigerator keeps food cold. It pumps heat out.",
    },
    {"prompt": "List three uses of baking soda", "response": "List three uses of baking soda."},
]


def load_old_scorer(rev: str) -> types.ModuleType:
    source = subprocess.run(
        ["git", "show", f"{rev}:flip_reward/scoring/scorer.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    module = types.ModuleType("old_scorer")
    module.__file__ = f"{rev}:flip_reward/scoring/scorer.py"
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def _fields(result) -> dict:
    return dataclasses.asdict(result)


async def _score(engine, scorer, module, items: list[dict], settings, method: str) -> list:
    await engine._llm.reset_prefix_cache()
    options = module.ScoreOptions(similarity=settings.similarity, prompt_mode=settings.prompt_mode, method=method)
    return await scorer.score([module.ScoreItem(i["prompt"], i["response"], id=i["id"]) for i in items], options)


async def main(args: argparse.Namespace) -> int:
    from bench.experiments import experiment_scorer
    from flip_reward.config import Settings
    from flip_reward.scoring import items as new_items
    from flip_reward.service import load_embedder, load_vllm_engine

    settings = Settings()
    engine = await asyncio.to_thread(load_vllm_engine, settings)
    embedder = await asyncio.to_thread(load_embedder, settings)
    old_module = load_old_scorer(args.against)
    old = old_module.Scorer(engine, embedder, settings)
    one_request = experiment_scorer(engine, embedder, settings, likelihood_arm=(False, False))
    prefill = experiment_scorer(engine, embedder, settings, likelihood_arm=(True, True))
    pairs = load_pairs()[: args.items] + [{"id": f"crafted-{k}", **c} for k, c in enumerate(_CRAFTED)]
    rows, failed = [], False
    try:
        reference = [_fields(r) for r in await _score(engine, old, old_module, pairs, settings, "likelihood")]
        for name, scorer, exact in (("new (one request)", one_request, True), ("new (prefill)", prefill, False)):
            results = [_fields(r) for r in await _score(engine, scorer, new_items, pairs, settings, "likelihood")]
            diffs = [abs(a["reward"] - b["reward"]) for a, b in zip(reference, results)]
            same = sum(a == b for a, b in zip(reference, results))
            bad = max(diffs) > (0.0 if exact else args.tolerance) or (exact and same < len(pairs))
            failed |= bad
            stuffed = sum(bool((r["likelihood"] or {}).get("keyword_stuffing")) for r in results)
            rows.append((f"likelihood {name}", len(pairs), max(diffs), same, stuffed, "FAIL" if bad else "ok"))
        few = pairs[: args.generate_items]
        for method in ("generate", "judge"):
            a = [_fields(r) for r in await _score(engine, old, old_module, few, settings, method)]
            b = [_fields(r) for r in await _score(engine, one_request, new_items, few, settings, method)]
            diffs = [abs((x["reward"] or 0.0) - (y["reward"] or 0.0)) for x, y in zip(a, b)]
            same = sum(x == y for x, y in zip(a, b))
            bad = same < len(few)
            failed |= bad
            rows.append((method, len(few), max(diffs), same, 0, "FAIL" if bad else "ok"))
    finally:
        await engine.shutdown()
    print(f"\nagainst {args.against} (old scorer), {settings.model or 'built-in model'}")
    print(f"{'arm':<30}{'items':>6}{'max |dreward|':>15}{'results identical':>19}{'stuffing':>10}  verdict")
    for name, n, diff, same, stuffed, verdict in rows:
        print(f"{name:<30}{n:>6}{diff:>15.3g}{same:>19}{stuffed:>10}  {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="HEAD", help="the git revision whose flip_reward/scoring/scorer.py is old")
    parser.add_argument("--items", type=int, default=24, help="real pairs scored by likelihood")
    parser.add_argument("--generate-items", type=int, default=6, help="of them, scored by generate and judge")
    parser.add_argument("--tolerance", type=float, default=1e-6, help="largest reward difference for prefill")
    sys.exit(asyncio.run(main(parser.parse_args())))
