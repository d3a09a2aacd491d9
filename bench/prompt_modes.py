"""What each prompt mode (and the likelihood method) costs and earns: tokens per reward, rewards/s
and pairwise accuracy.

    .venv/bin/python bench/prompt_modes.py [--pairs 128] [--only likelihood direct ...]

A fixed-seed sample of Auto-J pairs (../shared/eval/autoj_pairwise.jsonl; data/samples/ when that is
absent); each mode scores the chosen and the rejected response of every pair in one scorer call on
one in-process engine (the prefix cache is reset between modes). Accuracy counts a pair right when
reward(chosen) > reward(rejected); a tie counts half. Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEED = 0
# (name, method, prompt mode, structured output, likelihood distractors or None for the default);
# likelihood has no prompt mode and runs beside them so that its accuracy and rewards/s are
# measured on the same pairs in the same run.
VARIANTS = [
    ("likelihood", "likelihood", "direct", False, None),
    ("likelihood-no-distractors", "likelihood", "direct", False, 0),
    ("direct", "generate", "direct", False, None),
    ("fewshot", "generate", "fewshot", False, None),
    ("prefix", "generate", "prefix", False, None),
    ("paper", "generate", "paper", False, None),
    ("paper + structured output", "generate", "paper", True, None),
]


def load_pairs(n: int) -> list[dict]:
    path = ROOT.parent / "shared" / "eval" / "autoj_pairwise.jsonl"
    if not path.exists():
        path = ROOT / "data" / "samples" / "autoj_pairwise_64.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return random.Random(SEED).sample(rows, min(n, len(rows)))


async def run(n_pairs: int, only: list[str] | None) -> dict:
    from bench.experiments import experiment_scorer
    from flip_reward.config import Settings
    from flip_reward.scoring.scorer import ScoreItem, ScoreOptions
    from flip_reward.service import FlipService

    pairs = load_pairs(n_pairs)
    items = [ScoreItem(p["prompt"], p[k]) for p in pairs for k in ("chosen", "rejected")]
    service = FlipService(Settings())
    await service.load()
    if service.scorer is None or service.engine is None:
        raise SystemExit(service.load_error)
    results = {}
    try:
        for name, method, mode, structured, distractors in VARIANTS:
            if only and name not in only:
                continue
            print(f"{name} ...", flush=True)
            # the service's scorer with the experiments the service no longer has (bench/experiments.py)
            scorer = experiment_scorer(service.engine, service.embedder, service.settings, structured_output=structured)
            await service.engine._llm.reset_prefix_cache()  # no head start from the mode before
            started = time.perf_counter()
            options = ScoreOptions(
                similarity=service.settings.similarity, prompt_mode=mode, method=method, distractors=distractors
            )
            scored = await scorer.score(items, options)
            seconds = time.perf_counter() - started
            wins = ties = 0.0
            for i in range(0, len(scored), 2):
                chosen, rejected = scored[i].reward, scored[i + 1].reward
                if chosen is None or rejected is None:
                    continue
                wins += chosen > rejected
                ties += chosen == rejected
            results[name] = {
                "pairs": len(pairs),
                "accuracy": (wins + 0.5 * ties) / len(pairs),
                "ties": int(ties),
                "rewards_per_s": len(items) / seconds,
                "tokens_per_reward": sum(r.completion_tokens for r in scored) / len(items),
                "parse_failures": sum(1 for r in scored if r.parsed is False),
                "null_rewards": sum(1 for r in scored if r.reward is None),
            }
            print(name, json.dumps(results[name]), flush=True)
    finally:
        await service.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--only", nargs="*", choices=[v[0] for v in VARIANTS], help="run only these variants")
    args = parser.parse_args()
    results = asyncio.run(run(args.pairs, args.only))
    header = f"{'mode':<30}{'pairs':>6}{'accuracy':>10}{'ties':>6}{'rewards/s':>11}{'tok/reward':>11}{'unparsed':>10}"
    lines = [header, "-" * len(header)]
    for name, r in results.items():
        lines.append(
            f"{name:<30}{r['pairs']:>6}{r['accuracy']:>10.3f}{r['ties']:>6}{r['rewards_per_s']:>11.2f}"
            f"{r['tokens_per_reward']:>11.1f}{r['parse_failures']:>10}"
        )
    table = "\n".join(lines)
    print(table)
    from flip_reward.config import Settings
    from flip_reward.models import BUILTIN_LLM_NAME
    from flip_reward.scoring.prompts import PROMPT_VERSION

    settings = Settings()
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"prompt-modes-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": settings.model or BUILTIN_LLM_NAME,
        "prompt_version": PROMPT_VERSION,
        "similarity": settings.similarity,
        "max_tokens": settings.max_tokens,
        "seed": SEED,
    }
    out.write_text(json.dumps({"meta": meta, "results": results, "table": table}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
