"""Throughput of the service against the naive FLIP pipeline and the raw vLLM engine, in one run.

    .venv/bin/python bench/throughput.py [--items 256] [--naive-items 16]

Phases (same machine, same model, same prompts, same settings):
  raw     vLLM's offline LLM.generate on all prompts in one call + the same similarity step (ceiling)
  naive   the reference FLIP pipeline: transformers generate, one sample at a time, then word F1
  c1..c64 the service: N concurrent single /reward requests (closed loop) from an async httpx client
  batch   the service: /batch_reward with all items in one request, and in chunks of 32
  burst   2,000 single requests at once against a queue bound of 256: reward or 429, never 5xx
Each service phase gets items the service has not seen (so vLLM's prefix cache only helps with
the shared system prompt, as in training); the raw engine gets the same items as c64.
Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EVAL = ROOT.parent / "shared" / "eval"
SAMPLES = ROOT / "data" / "samples"
RESULTS = ROOT / "bench" / "results"
SEED = 0
MAX_RESPONSE_CHARS = 2000  # keeps one run within minutes on 2 CPU cores; both sides see the same items
QUEUE_BOUND = 256
BURST = 2000


# --- workload


def load_pairs() -> list[dict]:
    """Real (instruction, response) pairs: Self-Instruct reference answers and both Auto-J answers."""
    if EVAL.exists():
        files = [EVAL / "selfinstruct_reconstruction.jsonl", EVAL / "autoj_pairwise.jsonl"]
    else:
        files = [SAMPLES / "selfinstruct_reconstruction_64.jsonl", SAMPLES / "autoj_pairwise_64.jsonl"]
    pairs = []
    for path in files:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if "instruction" in row:
                pairs.append({"prompt": row["instruction"], "response": row["response"]})
            else:
                pairs += [{"prompt": row["prompt"], "response": row[k]} for k in ("chosen", "rejected")]
    pairs = [p for p in pairs if p["prompt"].strip() and p["response"].strip()
             and len(p["response"]) <= MAX_RESPONSE_CHARS]
    random.Random(SEED).shuffle(pairs)
    return [{"id": str(i), **p} for i, p in enumerate(pairs)]


def take(pairs: list[dict], start: int, n: int) -> list[dict]:
    """n items from `start`, wrapping around when the data is short (the fallback samples)."""
    return [pairs[(start + i) % len(pairs)] for i in range(n)]


# --- raw engine and naive pipeline (each in a subprocess of its own: one engine in memory at a time)


def _scorer(tokenizer, settings):
    from types import SimpleNamespace

    from app.scoring.scorer import Scorer

    return Scorer(SimpleNamespace(tokenizer=tokenizer, max_model_len=settings.max_model_len), None, settings)


def _prepared_prompts(items: list[dict], tokenizer, settings):
    """The service's own reconstruction prompts (method generate) as token ids."""
    from app.scoring.scorer import ScoreItem

    scorer = _scorer(tokenizer, settings)
    items = [ScoreItem(i["prompt"], i["response"]) for i in items]
    if settings.copy_guard:
        items = [scorer.apply_copy_guard(item)[0] for item in items]
    return [scorer.prepare_generate(item, settings.prompt_mode) for item in items]


def _similarity(items: list[dict], raw_outputs: list[str], settings, embedder=None) -> list[float]:
    from app.scoring.parse import parse_direct, parse_instruction
    from app.scoring.similarity import hybrid, paired_cosine_01, word_f1

    parse = parse_instruction if settings.prompt_mode == "paper" else parse_direct
    inferred = [parse(raw).instruction or "" for raw in raw_outputs]
    f1 = [word_f1(a, i["prompt"]) for a, i in zip(inferred, items)]
    if embedder is None:
        return f1
    cos = paired_cosine_01(embedder.encode(inferred), embedder.encode([i["prompt"] for i in items]))
    return [hybrid(f, float(c), settings.hybrid_weight) for f, c in zip(f1, cos)]


def _raw_generate(llm, items: list[dict], settings, embedder) -> tuple[list[float], int]:
    from vllm import SamplingParams

    prepared = _prepared_prompts(items, llm.get_tokenizer(), settings)
    outs = llm.generate([{"prompt_token_ids": p.token_ids} for p in prepared],
                        SamplingParams(max_tokens=settings.max_tokens, temperature=0.0), use_tqdm=False)
    rewards = _similarity(items, [p.answer_prefix + o.outputs[0].text for p, o in zip(prepared, outs)],
                          settings, embedder)
    return rewards, sum(len(o.outputs[0].token_ids) for o in outs)


def _raw_likelihood(llm, items: list[dict], settings) -> tuple[list[float], int]:
    """The service's likelihood prompts in two engine calls: the real instructions (with the PMI
    baselines, each distinct one once), then the distractors, read from the prefix cache."""
    from app.engines.vllm_local import cache_reached, prompt_logprob_params, read_prompt_logprobs
    from app.scoring.scorer import ScoreItem, likelihood_reward

    scorer = _scorer(llm.get_tokenizer(), settings)
    guarded = [scorer.apply_copy_guard(ScoreItem(i["prompt"], i["response"]))[0] if settings.copy_guard
               else ScoreItem(i["prompt"], i["response"]) for i in items]
    prepared = [scorer.prepare_likelihood(item) for item in guarded]
    pmi = settings.likelihood_baseline == "pmi"
    baselines = list(dict.fromkeys(
        tuple(ids) for p in prepared for ids in [p.unconditional_ids] + [p.unconditional_head + d for d in p.distractor_ids]
    )) if pmi else []

    def logprobs(prompts: list[list[int]], cached: bool) -> list:
        return llm.generate([{"prompt_token_ids": ids} for ids in prompts], prompt_logprob_params(cached),
                            use_tqdm=False)

    def tail(out, n: int) -> list[float]:
        return read_prompt_logprobs(out)[-n:]

    outs = logprobs([p.conditional_ids for p in prepared] + [list(b) for b in baselines], cached=False)
    by_baseline = dict(zip(baselines, outs[len(prepared):]))
    distractor_prompts = [(p, d) for p in prepared for d in p.distractor_ids]
    distractor_outs = logprobs([p.fitted.token_ids + d for p, d in distractor_prompts], cached=True)
    redo = [k for k, ((p, _), out) in enumerate(zip(distractor_prompts, distractor_outs))
            if cache_reached(out, len(p.fitted.token_ids))]
    for k, out in zip(redo, logprobs([distractor_outs[k].prompt_token_ids for k in redo], cached=False)):
        distractor_outs[k] = out
    distractor_tails = iter(tail(out, len(d)) for (_, d), out in zip(distractor_prompts, distractor_outs))
    rewards = []
    for out, p in zip(outs, prepared):
        n = len(p.instruction_ids)
        uncond = tail(by_baseline[tuple(p.unconditional_ids)], n) if pmi else None
        distractors = [(next(distractor_tails),
                        tail(by_baseline[tuple(p.unconditional_head + d)], len(d)) if pmi else None)
                       for d in p.distractor_ids]
        rewards.append(likelihood_reward(tail(out, n), uncond, settings.likelihood_scale, distractors)[0])
    return rewards, 0


def run_raw(items: list[dict]) -> dict:
    from app.config import Settings
    from app.embeddings.encoder import Embedder
    from app.models import resolve_embedding_model, resolve_llm

    settings = Settings()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kv_cache_gib))
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(settings.cpu_reserved_cores))
    from vllm import LLM
    from vllm.platforms import current_platform

    from app.engines.vllm_local import resolve_dtype, resolve_enforce_eager

    eager = resolve_enforce_eager(settings.enforce_eager, current_platform.is_cpu())
    llm = LLM(model=resolve_llm(settings.model, settings.cache_dir), max_model_len=settings.max_model_len,
              dtype=resolve_dtype(settings.dtype), enforce_eager=eager,
              max_num_seqs=settings.max_num_seqs, seed=settings.seed, enable_prefix_caching=True,
              block_size=settings.kv_block_size, gpu_memory_utilization=settings.gpu_memory_utilization)
    embedder = Embedder(resolve_embedding_model(settings.embedding_model), device=settings.embedding_device)
    embedder.encode(["warm up"])
    started = time.perf_counter()
    if settings.method == "likelihood":
        rewards, tokens = _raw_likelihood(llm, items, settings)
    else:
        rewards, tokens = _raw_generate(llm, items, settings, embedder)
    seconds = time.perf_counter() - started
    return {"items": len(items), "seconds": seconds, "rewards_per_s": len(items) / seconds,
            "tokens_per_reward": tokens / len(items), "mean_reward": statistics.fmean(rewards)}


def run_naive(items: list[dict]) -> dict:
    """FLIP's reference code path: HF generate per sample (greedy), parse, word F1."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.config import Settings
    from app.models import resolve_llm

    settings = Settings()
    path = resolve_llm(settings.model, settings.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16).eval()
    prepared = _prepared_prompts(items, tokenizer, settings)
    started = time.perf_counter()
    raw, tokens = [], 0
    with torch.inference_mode():
        for p in prepared:
            ids = torch.tensor([p.token_ids])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=settings.max_tokens,
                                 do_sample=False, pad_token_id=tokenizer.eos_token_id)
            new = out[0, ids.shape[1]:]
            tokens += len(new)
            raw.append(p.answer_prefix + tokenizer.decode(new, skip_special_tokens=True))
    rewards = _similarity(items, raw, settings)
    seconds = time.perf_counter() - started
    return {"items": len(items), "seconds": seconds, "rewards_per_s": len(items) / seconds,
            "tokens_per_reward": tokens / len(items), "mean_reward": statistics.fmean(rewards)}


def in_subprocess(phase: str, items: list[dict]) -> dict:
    RESULTS.mkdir(parents=True, exist_ok=True)
    job = RESULTS / f".{phase}-items.json"
    result = RESULTS / f".{phase}-result.json"
    job.write_text(json.dumps(items))
    result.unlink(missing_ok=True)
    out = subprocess.run([sys.executable, __file__, "--phase", phase, "--job", str(job)],
                         capture_output=True, text=True, cwd=ROOT)
    job.unlink()
    if out.returncode != 0 or not result.exists():  # vLLM writes to stdout too: the result goes to a file
        raise RuntimeError(f"{phase} failed:\n{out.stderr[-3000:]}")
    data = json.loads(result.read_text())
    result.unlink()
    return data


# --- the service


class Server:
    def __init__(self, log: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port),
             "--max-queued-items", str(QUEUE_BOUND), "--log-level", "warning"],
            cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
        self.peak_rss = 0
        self._stop = threading.Event()
        threading.Thread(target=self._watch_rss, daemon=True).start()

    def _watch_rss(self) -> None:
        import psutil

        root = psutil.Process(self.process.pid)
        while not self._stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                self.peak_rss = max(self.peak_rss, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.25)

    def wait_ready(self, timeout_s: float = 900) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("server exited during start")
            try:
                if httpx.get(self.url + "/ready", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(1)
        raise RuntimeError("server not ready in time")

    def stop(self) -> None:
        self._stop.set()
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _summary(n: int, seconds: float, latencies: list[float], tokens: int) -> dict:
    latencies = sorted(latencies)
    return {"items": n, "seconds": seconds, "rewards_per_s": n / seconds,
            "p50_s": latencies[len(latencies) // 2], "p99_s": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "tokens_per_reward": tokens / n}


async def singles(url: str, items: list[dict], concurrency: int) -> dict:
    import httpx

    queue = list(reversed(items))
    latencies, tokens = [], 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal tokens
        while queue:
            item = queue.pop()
            t0 = time.perf_counter()
            r = await client.post("/reward", json=item)
            latencies.append(time.perf_counter() - t0)
            r.raise_for_status()
            tokens += r.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=concurrency)) as c:
        started = time.perf_counter()
        await asyncio.gather(*(worker(c) for _ in range(concurrency)))
        return _summary(len(items), time.perf_counter() - started, latencies, tokens)


async def batches(url: str, items: list[dict], chunk: int) -> dict:
    import httpx

    latencies, tokens = [], 0
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        started = time.perf_counter()
        for start in range(0, len(items), chunk):
            t0 = time.perf_counter()
            r = await client.post("/batch_reward", json={"items": items[start:start + chunk]})
            latencies.append(time.perf_counter() - t0)
            r.raise_for_status()
            tokens += sum(res["usage"]["completion_tokens"] for res in r.json()["results"])
        return _summary(len(items), time.perf_counter() - started, latencies, tokens)


async def burst(url: str, items: list[dict]) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=len(items), max_keepalive_connections=len(items))
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(900, pool=None), limits=limits) as client:
        started = time.perf_counter()
        responses = await asyncio.gather(*(client.post("/reward", json=i) for i in items), return_exceptions=True)
        seconds = time.perf_counter() - started
    counts: dict[str, int] = {}
    for r in responses:
        if isinstance(r, BaseException):
            key = f"client error {type(r).__name__}"
        elif r.status_code == 200:
            key = "200 reward" if r.json()["reward"] is not None else "200 null reward"
        else:
            key = str(r.status_code)
        counts[key] = counts.get(key, 0) + 1
    ok = set(counts) <= {"200 reward", "429"} and sum(counts.values()) == len(items)
    return {"requests": len(items), "queue_bound": QUEUE_BOUND, "seconds": seconds, "outcomes": counts,
            "every_request_answered_reward_or_429": ok}


# --- the run


def run_burst_only(method: str | None) -> None:
    if method:
        os.environ["FLIP_METHOD"] = method
    pairs = load_pairs()
    server = Server(RESULTS / "server.log")
    try:
        server.wait_ready()
        warm = asyncio.run(singles(server.url, take(pairs, len(pairs) - 32, 32), 8))
        print(f"warm-up: 32 singles at {warm['rewards_per_s']:.2f} rewards/s", flush=True)
        b = asyncio.run(burst(server.url, take(pairs, 0, BURST)))
    finally:
        server.stop()
    print(f"burst: {b['requests']} singles, queue bound {b['queue_bound']}: {b['outcomes']} "
          f"in {b['seconds']:.1f} s -> {'OK' if b['every_request_answered_reward_or_429'] else 'FAILED'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"burst-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "warm_up": warm, "burst": b}, indent=2))
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=256, help="items per service phase (and for the raw engine)")
    parser.add_argument("--single-items", type=int, default=32, help="items for concurrency 1")
    parser.add_argument("--naive-items", type=int, default=16, help="items for the naive pipeline (slow)")
    parser.add_argument("--method", choices=["likelihood", "generate"],
                        help="how the service and the raw engine score (default: the server's default)")
    parser.add_argument("--burst-only", action="store_true",
                        help="only the burst, after a warm-up of 32 singles (a quick backpressure check)")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:  # a subprocess phase: items in, one JSON line out
        items = json.loads(Path(args.job).read_text())
        data = {"raw": run_raw, "naive": run_naive}[args.phase](items)
        Path(args.job).with_name(f".{args.phase}-result.json").write_text(json.dumps(data))
        return
    if args.burst_only:
        run_burst_only(args.method)
        return

    from app.config import Settings
    from app.models import BUILTIN_LLM_NAME

    if args.method:  # the server and the raw-engine subprocess read it from the environment
        os.environ["FLIP_METHOD"] = args.method
    settings = Settings()
    pairs = load_pairs()
    n = args.items
    sets = {name: take(pairs, k * n, n) for k, name in enumerate(["c64", "c32", "c8", "batch_all", "batch_32"])}
    sets["c1"] = take(pairs, 5 * n, args.single_items)
    sets["naive"] = take(pairs, 5 * n + args.single_items, args.naive_items)
    print(f"workload: {len(pairs)} real pairs (seed {SEED}), {n} items per phase, method {settings.method}",
          flush=True)

    results: dict = {}
    RESULTS.mkdir(parents=True, exist_ok=True)
    # The raw engine runs first and the service's main phase right after it: the machine's load
    # changes over minutes. Not at the same time: two engines on a small machine crash (measured:
    # with every core bound by both, the raw engine aborted while the server idled).
    print("raw engine (LLM.generate, one call) ...", flush=True)
    results["raw_engine"] = in_subprocess("raw", sets["c64"])
    server = Server(RESULTS / "server.log")
    try:
        server.wait_ready()
        asyncio.run(singles(server.url, take(pairs, len(pairs) - 8, 8), 8))  # warm-up, not measured
        for name, concurrency in (("c64", 64), ("c32", 32), ("c8", 8), ("c1", 1)):
            print(f"service: {concurrency} concurrent singles ...", flush=True)
            results[f"service_singles_c{concurrency}"] = asyncio.run(singles(server.url, sets[name], concurrency))
        print("service: /batch_reward ...", flush=True)
        results["service_batch_all"] = asyncio.run(batches(server.url, sets["batch_all"], n))
        results["service_batch_32"] = asyncio.run(batches(server.url, sets["batch_32"], 32))
        print(f"service: burst of {BURST} singles ...", flush=True)
        results["burst"] = asyncio.run(burst(server.url, take(pairs, 0, BURST)))
        import httpx

        results["service_info"] = httpx.get(server.url + "/info", timeout=30).json()["throughput"]
    finally:
        server.stop()
    print("naive (transformers generate, one at a time) ...", flush=True)
    results["naive"] = in_subprocess("naive", sets["naive"])
    results["service_peak_rss_mib"] = server.peak_rss / 2**20

    ceiling, naive = results["raw_engine"]["rewards_per_s"], results["naive"]["rewards_per_s"]
    rows = [("raw engine (ceiling)", results["raw_engine"]), ("naive (reference generate)", results["naive"])]
    rows += [(k.replace("service_", "service "), v) for k, v in results.items()
             if k.startswith("service_") and isinstance(v, dict) and "rewards_per_s" in v]
    header = f"{'phase':<28}{'items':>6}{'rewards/s':>11}{'p50 s':>8}{'p99 s':>8}{'tok/reward':>11}" \
             f"{'/ceiling':>10}{'/naive':>8}"
    lines = [header, "-" * len(header)]
    for name, r in rows:
        p50 = f"{r['p50_s']:.2f}" if "p50_s" in r else "-"
        p99 = f"{r['p99_s']:.2f}" if "p99_s" in r else "-"
        lines.append(f"{name:<28}{r['items']:>6}{r['rewards_per_s']:>11.2f}{p50:>8}{p99:>8}"
                     f"{r['tokens_per_reward']:>11.1f}{r['rewards_per_s'] / ceiling:>10.2f}"
                     f"{r['rewards_per_s'] / naive:>8.1f}")
    b = results["burst"]
    lines.append(f"burst: {b['requests']} singles, queue bound {b['queue_bound']}: {b['outcomes']} "
                 f"in {b['seconds']:.1f} s -> {'OK' if b['every_request_answered_reward_or_429'] else 'FAILED'}")
    lines.append(f"service peak RSS (server + engine processes): {results['service_peak_rss_mib']:.0f} MiB")
    engine = results["service_info"]["engine"]
    lines.append(f"prefix cache: {engine['prefix_cache']['hits']} of {engine['prefix_cache']['queries']} prompt "
                 f"tokens reused; embedding cache: {results['service_info']['embedding_cache']}")
    table = "\n".join(lines)
    print(table)

    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "model": settings.model or BUILTIN_LLM_NAME, "method": settings.method, "prompt_mode": settings.prompt_mode,
            "max_tokens": settings.max_tokens, "items": n, "seed": SEED}
    out = RESULTS / f"throughput-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"meta": meta, "results": results, "table": table}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
