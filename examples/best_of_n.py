"""Best-of-N over a file with POST /rank, against the local service.

Each line of the input is `{"prompt": ..., "responses": [...]}`, or a pairwise row
`{"prompt", "chosen", "rejected"}` (data/samples/*pairwise*.jsonl), ranked as N=2 with the
human-preferred answer known; then it also reports how often /rank picked it.

    .venv/bin/python examples/best_of_n.py data/samples/autoj_pairwise_64.jsonl --limit 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples._common import URL, load_jsonl
from flip_reward.client import FlipClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--similarity", choices=["f1", "embedding", "hybrid"])
    args = parser.parse_args()

    rows = load_jsonl(args.path)[: args.limit]
    agree = pairs = ties = 0
    with FlipClient(URL, similarity=args.similarity) as client:
        for row in rows:
            responses = row.get("responses") or [row["chosen"], row["rejected"]]
            ranked = client.rank(row["prompt"], responses)
            best = ranked["best_index"]
            rewards = ", ".join("null" if r is None else f"{r:.3f}" for r in ranked["rewards"])
            print(f"{row.get('id', '?'):<28} best={best} rewards=[{rewards}]  {row['prompt'][:50]!r}")
            if "chosen" in row and best is not None:
                pairs += 1
                tie = ranked["rewards"][0] == ranked["rewards"][1]  # a tie goes to index 0: not a win
                ties += tie
                agree += best == 0 and not tie
    if pairs:
        print(f"\n/rank preferred the human-chosen response in {agree}/{pairs} pairs ({ties} ties)")


if __name__ == "__main__":
    main()
