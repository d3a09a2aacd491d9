"""Best-of-N latency: one POST /rank with N responses (one engine batch) against the same N
responses sent as N sequential POST /reward calls, side by side on a running service.

The prompt is a self-instruct instruction from data/samples; the N candidates are its own
response plus the responses of the next N-1 rows (off-topic distractors), so the ranking can
also be checked: the true response should come first.

    .venv/bin/python bench/rank_bench.py --url http://127.0.0.1:8000 --n 16 --repeats 3

Prints a table and writes bench/results/rank_bench.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data" / "samples" / "selfinstruct_reconstruction_64.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--row", type=int, default=2, help="which self-instruct row gives the prompt")
    args = parser.parse_args()

    rows = [json.loads(line) for line in SAMPLES.read_text().splitlines() if line.strip()]
    prompt = rows[args.row]["instruction"]
    candidates = [rows[(args.row + k) % len(rows)]["response"] for k in range(args.n)]  # index 0 is the true one

    seq = f"reward x{args.n} (sequential)"
    timings: dict[str, list[float]] = {"rank (1 call)": [], f"batch_reward of {args.n}": [], seq: []}
    items = [{"prompt": prompt, "response": c} for c in candidates]
    with httpx.Client(base_url=args.url, timeout=600) as http:
        info = http.get("/info").json()
        http.post("/rank", json={"prompt": prompt, "responses": candidates[:2]}).raise_for_status()  # warm-up
        for _ in range(args.repeats):
            started = time.perf_counter()
            ranked = http.post("/rank", json={"prompt": prompt, "responses": candidates})
            ranked.raise_for_status()
            timings["rank (1 call)"].append(time.perf_counter() - started)
            started = time.perf_counter()
            batch = http.post("/batch_reward", json={"items": items}).json()["rewards"]
            timings[f"batch_reward of {args.n}"].append(time.perf_counter() - started)
            started = time.perf_counter()
            singles = [http.post("/reward", json=item).json()["reward"] for item in items]
            timings[seq].append(time.perf_counter() - started)
    ranked = ranked.json()

    print(f"prompt (self-instruct row {args.row}): {prompt[:100]!r}")
    print(f"best_index={ranked['best_index']} (0 is the prompt's own response); ranking={ranked['ranking']}")
    print(f"rewards: {[round(r, 3) for r in ranked['rewards']]}")
    same = ranked["rewards"] == batch
    differ = sum(abs(a - b) > 1e-6 for a, b in zip(ranked["rewards"], singles))
    print(f"/rank rewards equal /batch_reward's for the same items: {same}")
    # Greedy decoding in a batch is not bit-identical to decoding alone on every backend.
    print(f"rewards that differ from a lone /reward of the same item: {differ}/{args.n}\n")
    print(f"{'what':<28}{'median s':>10}{'min s':>10}{'runs':>6}")
    for name, values in timings.items():
        print(f"{name:<28}{statistics.median(values):>10.2f}{min(values):>10.2f}{len(values):>6}")
    rank_median = statistics.median(timings["rank (1 call)"])
    seq_median = statistics.median(timings[seq])
    print(f"\nspeed-up of one /rank over {args.n} sequential /reward calls: {seq_median / rank_median:.1f}x")

    out = ROOT / "bench" / "results" / "rank_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "n": args.n,
                "repeats": args.repeats,
                "row": args.row,
                "prompt": prompt,
                "model": info["model"],
                "machine": platform.platform(),
                "timings_s": timings,
                "rank_response": ranked,
                "equal_to_batch_reward": same,
                "single_rewards": singles,
                "differ_from_single": differ,
            },
            indent=1,
        )
    )
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
