"""Start-up time and one 64-item /batch_reward per method, on the built-in CPU default.

    .venv/bin/python bench/startup.py [--items 64]

Starts `flip-reward serve` on a free loopback port, times it to /ready, then posts the same
64 Auto-J (instruction, response) pairs once per method. Prints a table and writes
bench/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.conftest import start_server, stop_server  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def items(n: int) -> list[dict]:
    shared = ROOT.parent / "shared" / "eval" / "autoj_pairwise.jsonl"
    path = shared if shared.exists() else ROOT / "data" / "samples" / "autoj_pairwise_64.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()[:n]]
    return [{"id": r["id"], "prompt": r["prompt"], "response": r["chosen"]} for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=64)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    server = start_server(RESULTS)
    ready_s = time.perf_counter() - started
    batch = items(args.items)
    rows = []
    try:
        with httpx.Client(base_url=server.url, timeout=1800) as client:
            for method in ("likelihood", "generate", "judge"):
                t = time.perf_counter()
                body = client.post("/batch_reward", json={"items": batch, "method": method}).json()
                elapsed = time.perf_counter() - t
                scored = sum(r is not None for r in body["rewards"])
                tokens = sum(r["usage"]["completion_tokens"] for r in body["results"])
                rows.append(
                    {
                        "method": method,
                        "items": len(batch),
                        "scored": scored,
                        "seconds": elapsed,
                        "rewards_per_s": len(batch) / elapsed,
                        "generated_tokens": tokens,
                    }
                )
    finally:
        stop_server(server)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "start_to_ready_s": ready_s,
        "batches": rows,
    }
    print(f"start-up to /ready: {ready_s:.1f} s")
    print(f"{'method':<12}{'items':>6}{'scored':>8}{'seconds':>9}{'rewards/s':>11}{'gen tokens':>12}")
    for r in rows:
        print(
            f"{r['method']:<12}{r['items']:>6}{r['scored']:>8}{r['seconds']:>9.1f}{r['rewards_per_s']:>11.2f}"
            f"{r['generated_tokens']:>12}"
        )
    (RESULTS / "startup.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
