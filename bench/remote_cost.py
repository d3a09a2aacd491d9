"""What a reward costs through a vLLM fleet against in process: tokens computed per reward.

    .venv/bin/python bench/remote_cost.py [--items 8] [--servers 2] [--method likelihood]

The same items (the first N of data/samples/selfinstruct_reconstruction_64.jsonl), the same model
(the built-in one, float32) and the same scorer, scored in one batch:
- local: the in-process vLLM engine; computed tokens = prompt tokens - tokens its prefix cache served
  (each request's RequestOutput.num_cached_tokens);
- then `--servers` real `vllm serve` processes, started here, each mode on freshly reset prefix
  caches (POST /reset_prefix_cache, VLLM_SERVER_DEV_MODE=1) and a fresh front engine:
  - remote completions: prompt logprobs through /v1/completions (what the OpenAI API allows:
    vLLM never reads the prefix cache for them);
  - remote generate, no affinity: through /inference/v1/generate (reads the cache), least busy server;
  - remote generate + affinity: the same, an item's prompts to the server holding its prefix (default).
  Computed tokens = the servers' own vllm:prompt_tokens_by_source_total{source="local_compute"}.
Every prompt-logprobs position computed is a full-vocabulary log-softmax, so "computed" is also
the count of those. Prints a table (ratios to local side by side) and writes JSON to bench/results/.
Run it under the engine lock: `flock /tmp/flip-engine.lock .venv/bin/python bench/remote_cost.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REMOTE_MODES = [  # (name, prompt-logprobs endpoint, prefix affinity)
    ("remote completions", "completions", True),
    ("remote generate, no affinity", "generate", False),
    ("remote generate + affinity", "generate", True),
]


def load_items(n: int) -> list:
    from flip_reward.scoring.scorer import ScoreItem

    path = ROOT / "data" / "samples" / "selfinstruct_reconstruction_64.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][:n]
    return [ScoreItem(r["instruction"], r["response"], id=r["id"]) for r in rows]


def options(method: str):
    from flip_reward.config import Settings
    from flip_reward.scoring.scorer import ScoreOptions

    settings = Settings()
    return ScoreOptions(similarity=settings.similarity, prompt_mode=settings.prompt_mode, method=method)


async def score(engine, items, method: str) -> tuple[list, float]:
    from flip_reward.config import Settings
    from flip_reward.scoring.scorer import Scorer

    embedder = None
    if method == "generate":
        from flip_reward.service import load_embedder

        embedder = load_embedder(Settings())
    scorer = Scorer(engine, embedder, Settings())  # type: ignore[arg-type]  # likelihood and judge use no embedder
    started = time.perf_counter()
    results = await scorer.score(items, options(method))
    return results, time.perf_counter() - started


async def run_local(items, method: str) -> dict:
    from flip_reward.config import Settings
    from flip_reward.service import load_vllm_engine

    engine = await asyncio.to_thread(load_vllm_engine, Settings())
    counts = {"requests": 0, "prompt": 0, "cached": 0}
    raw_call = engine._consume  # each request the engine runs (under its supervision)

    async def counted(prompt_token_ids, sampling_params):
        out = await raw_call(prompt_token_ids, sampling_params)
        counts["requests"] += 1
        counts["prompt"] += len(prompt_token_ids)
        counts["cached"] += out.num_cached_tokens or 0
        return out

    engine._consume = counted
    try:
        await score(engine, items[:1], method)  # warm-up: the first requests pay one-time costs
        await engine._llm.reset_prefix_cache()
        counts.update(requests=0, prompt=0, cached=0)
        results, seconds = await score(engine, items, method)
    finally:
        await engine.shutdown()
    return {
        "requests": counts["requests"],
        "prompt_tokens": counts["prompt"],
        "computed_tokens": counts["prompt"] - counts["cached"],
        "seconds": seconds,
        "rewards": [r.reward for r in results],
    }


def start_servers(n: int, log_dir: Path) -> list[tuple[subprocess.Popen, str]]:
    from flip_reward.config import Settings
    from flip_reward.models import builtin_vllm_serve_command, prepare_builtin_llm

    model_dir = prepare_builtin_llm(Settings().cache_dir)
    servers = []
    for k in range(n):
        port = 18600 + k
        process = subprocess.Popen(
            builtin_vllm_serve_command(model_dir, port),
            stdout=(log_dir / f"vllm-{port}.log").open("w"),
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "VLLM_CPU_KVCACHE_SPACE": "1",
                "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
                "VLLM_SERVER_DEV_MODE": "1",
            },
        )
        servers.append((process, f"http://127.0.0.1:{port}"))
    deadline = time.monotonic() + 900
    for process, url in servers:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"vllm serve {url} exited; see {log_dir}")
            try:
                if httpx.get(url + "/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"vllm serve {url} not up; see {log_dir}")
            time.sleep(1)
    return servers


def server_counters(urls: list[str]) -> dict[str, float]:
    """The fleet's prompt-token counters, summed over servers."""
    wanted = {
        "vllm:prompt_tokens_total{": "prompt",
        'source="local_compute"': "computed",
        'source="local_cache_hit"': "cache_hit",
    }
    totals = dict.fromkeys(wanted.values(), 0.0)
    for url in urls:
        for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
            if line.startswith(("vllm:prompt_tokens_total{", "vllm:prompt_tokens_by_source_total{")):
                for marker, key in wanted.items():
                    if marker in line:
                        totals[key] += float(line.rsplit(" ", 1)[1])
    return totals


async def run_remote(urls: list[str], items, method: str, endpoint: str, affinity: bool) -> dict:
    from flip_reward.config import Settings
    from flip_reward.engines.openai_remote import RemoteEngine

    settings = Settings(
        engine="remote",
        remote_urls=urls,
        remote_wait_s=0,
        remote_prompt_logprobs=endpoint,
        remote_prefix_affinity=affinity,
    )
    engine = await asyncio.to_thread(RemoteEngine.start, settings)
    try:
        await score(engine, items[:1], method)  # warm-up, as local
        async with httpx.AsyncClient(timeout=30) as http:
            for url in urls:
                (await http.post(url + "/reset_prefix_cache")).raise_for_status()
        before = server_counters(urls)
        sent_before = [b.requests_total for b in engine.backends]
        results, seconds = await score(engine, items, method)
        after = server_counters(urls)
    finally:
        await engine.shutdown()
    return {
        "requests": sum(b.requests_total for b in engine.backends) - sum(sent_before),
        "prompt_tokens": int(after["prompt"] - before["prompt"]),
        "computed_tokens": int(after["computed"] - before["computed"]),
        "seconds": seconds,
        "per_server_requests": [b.requests_total - s for b, s in zip(engine.backends, sent_before)],
        "rewards": [r.reward for r in results],
    }


async def run(n_items: int, n_servers: int, method: str) -> dict:
    items = load_items(n_items)
    print("local ...", flush=True)
    results = {"local": await run_local(items, method)}
    with tempfile.TemporaryDirectory(prefix="remote-cost-") as tmp:
        servers = start_servers(n_servers, Path(tmp))
        urls = [url for _, url in servers]
        try:
            for name, endpoint, affinity in REMOTE_MODES:
                print(f"{name} ...", flush=True)
                results[name] = await run_remote(urls, items, method, endpoint, affinity)
        finally:
            for process, _ in servers:
                process.terminate()
            for process, _ in servers:
                process.wait(timeout=60)
    local = results["local"]
    for r in results.values():
        r["computed_per_reward"] = r["computed_tokens"] / len(items)
        r["prompt_per_reward"] = r["prompt_tokens"] / len(items)
        r["computed_vs_local"] = r["computed_tokens"] / local["computed_tokens"]
        r["seconds_vs_local"] = r["seconds"] / local["seconds"]
        r["max_reward_diff_vs_local"] = max(abs(a - b) for a, b in zip(r["rewards"], local["rewards"]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--method", default="likelihood", choices=["likelihood", "generate", "judge"])
    args = parser.parse_args()
    results = asyncio.run(run(args.items, args.servers, args.method))
    header = (
        f"{'engine':<32}{'requests':>9}{'prompt tok/reward':>18}{'computed tok/reward':>20}"
        f"{'computed vs local':>18}{'s vs local':>11}{'max |reward diff|':>18}"
    )
    lines = [f"method {args.method}, {args.items} items, {args.servers} servers", header, "-" * len(header)]
    for name, r in results.items():
        lines.append(
            f"{name:<32}{r['requests']:>9}{r['prompt_per_reward']:>18.1f}{r['computed_per_reward']:>20.1f}"
            f"{r['computed_vs_local']:>18.2f}{r['seconds_vs_local']:>11.2f}{r['max_reward_diff_vs_local']:>18.2e}"
        )
    table = "\n".join(lines)
    print(table)
    from flip_reward.config import Settings
    from flip_reward.models import BUILTIN_LLM_NAME

    settings = Settings()
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"remote-cost-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": settings.model or BUILTIN_LLM_NAME,
        "method": args.method,
        "items": args.items,
        "servers": args.servers,
        "distractors": settings.likelihood_distractors,
        "baseline": "pmi",
    }
    out.write_text(json.dumps({"meta": meta, "results": results, "table": table}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
