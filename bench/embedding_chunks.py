"""The embedder's forward passes: texts padded together by count only, against length buckets
(flip_reward/embeddings/encoder.py, Embedder.LENGTH_RATIO), on real eval instructions.

    .venv/bin/python bench/embedding_chunks.py [--texts 512]

For micro-batches of 64, 16 and 8 texts (what a /batch_reward and what concurrent singles bring to
the embedder's micro-batcher): CPU and wall milliseconds per text, encoded as one call padded in
chunks of 16 (sentence-transformers sorts a call by length), and in the length buckets the service
uses. Both ways run in this one process, interleaved, on the same texts. A table on stdout and
JSON in bench/results/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.front_ceiling import write_json  # noqa: E402
from bench.throughput import load_pairs, take  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from flip_reward.embeddings.encoder import Embedder
    from flip_reward.models import resolve_embedding_model

    embedder = Embedder(resolve_embedding_model(None))
    texts = [p["prompt"] for p in take(load_pairs(), 0, args.texts)]
    bucketed = embedder.encode
    ratio = embedder.LENGTH_RATIO

    def by_count(group: list[str]):
        embedder.LENGTH_RATIO = float("inf")  # one bucket: padded by count only, as before
        try:
            return bucketed(group)
        finally:
            embedder.LENGTH_RATIO = ratio

    bucketed(texts[:32])  # warm-up
    totals: dict[tuple[int, str], list[float]] = {}
    for _ in range(args.rounds):
        for size in (64, 16, 8):
            calls = [texts[k : k + size] for k in range(0, len(texts), size)]
            for way, encode in (("by count", by_count), ("length buckets", bucketed)):
                cpu, wall = time.process_time(), time.perf_counter()
                for call in calls:
                    encode(call)
                t = totals.setdefault((size, way), [0.0, 0.0])
                t[0] += time.process_time() - cpu
                t[1] += time.perf_counter() - wall
    n = len(texts) * args.rounds
    lines = [f"{'micro-batch':>12}  {'way':<16}{'CPU ms/text':>13}{'wall ms/text':>14}{'vs by count':>13}"]
    results = []
    for (size, way), (cpu, wall) in totals.items():
        base = totals[(size, "by count")][0]
        lines.append(f"{size:>12}  {way:<16}{cpu / n * 1e3:>13.2f}{wall / n * 1e3:>14.2f}{cpu / base:>12.2f}x")
        results.append(
            {"micro_batch": size, "way": way, "cpu_ms_per_text": cpu / n * 1e3, "wall_ms_per_text": wall / n * 1e3}
        )
    table = "\n".join(lines)
    print(f"{len(texts)} eval instructions, {args.rounds} rounds, length ratio {ratio:g}\n{table}")
    write_json("embedding-chunks", {"results": results, "table": table})


if __name__ == "__main__":
    main()
