"""Throughput of the service against the naive FLIP pipeline and the raw vLLM engine, in one run.

    .venv/bin/python bench/throughput.py [--items 256] [--naive-items 16]
    .venv/bin/python bench/throughput.py --likelihood-ab [--ab-items 128] [--concurrency 64] [--ab-responses long]
        [--ab-arms before,after]
    .venv/bin/python bench/throughput.py --burst-only [--cpu-hog]

Phases (same machine, same model, same prompts, same settings):
  raw     the service's own scoring (flip_reward/scoring: copy guard, prepare, run) on the in-process engine,
          all items in one call: the service minus HTTP and its micro-batcher (ceiling)
  naive   the reference FLIP pipeline: transformers generate, one sample at a time, then word F1, on
          the engine's device (cuda when available)
  c1..c64 the service: N concurrent single /reward requests (closed loop) from an async httpx client
  batch   the service: /batch_reward with all items in one request, and in chunks of 32
  burst   2,000 single requests at once against a queue bound of 256: reward, or 429/503 before any
          work (--cpu-hog: beside a busy loop in another process), never a 504
Each service phase gets items the service has not seen (so vLLM's prefix cache only helps with
the shared system prompt, as in training); the raw engine gets the same items as c64.
--likelihood-ab: the likelihood method before (every instruction in one request, the real one from the
response on) and after (the response prefilled without logprobs, the instructions scored from the
prefix cache) on one engine, as 64 concurrent singles, in interleaved rounds: rewards/s, prompt
tokens computed with logprobs per reward, engine requests per reward, and whether the rewards are
identical.
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
# --ab-responses long: the long outputs FLIP is meant for (Auto-J answers mostly), still within the
# model's 2,048-token context after the prompt
LONG_RESPONSE_CHARS = (1200, 6000)
# Items each arm scores, as concurrent singles, before any is measured: the engine's first batches of
# each shape are slow (a 16-item warm-up left the first measured arm 1.5x slower in its first round).
WARM_UP = 64
QUEUE_BOUND = 256
BURST = 2000


# --- workload


def load_pairs(response_chars: tuple[int, int] = (1, MAX_RESPONSE_CHARS)) -> list[dict]:
    """Real (instruction, response) pairs: Self-Instruct reference answers and both Auto-J answers,
    with a response of `response_chars` (least, most) characters."""
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
    pairs = [
        p
        for p in pairs
        if p["prompt"].strip()
        and p["response"].strip()
        and response_chars[0] <= len(p["response"]) <= response_chars[1]
    ]
    random.Random(SEED).shuffle(pairs)
    return [{"id": str(i), **p} for i, p in enumerate(pairs)]


def take(pairs: list[dict], start: int, n: int) -> list[dict]:
    """n items from `start`, wrapping around when the data is short (the fallback samples)."""
    return [pairs[(start + i) % len(pairs)] for i in range(n)]


# --- the shipped pipeline without HTTP (raw ceiling, likelihood before/after) and the naive one,
# each in a subprocess of its own: one engine in memory at a time


def score_options(settings, method: str | None = None):
    """The options a request without any gets (flip_reward/api/reward.py's score_options)."""
    from flip_reward.scoring.scorer import ScoreOptions

    return ScoreOptions(
        similarity=settings.similarity,
        prompt_mode=settings.prompt_mode,
        method=method or settings.method,
        copy_guard=settings.copy_guard,
        distractors=settings.likelihood_distractors,
    )


async def score_raw(engine, embedder, settings, items: list[dict]) -> list:
    """The service's own scoring (copy guard, the method's prepare and run, the same arithmetic) on
    every item in one call: the service minus HTTP and its micro-batcher."""
    from flip_reward.scoring.scorer import ScoreItem, Scorer

    scorer = Scorer(engine, embedder, settings)
    return await scorer.score(
        [ScoreItem(i["prompt"], i["response"], id=i.get("id")) for i in items], score_options(settings)
    )


class LogprobCounter:
    """An engine as it is, counting the prompt positions it computed logprobs for (the full-vocabulary
    log-softmax the likelihood method pays for)."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.logprob_positions = 0
        self.requests = 0

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    async def generate(self, prompt_token_ids: list[int], params):
        self.requests += 1
        return await self._engine.generate(prompt_token_ids, params)

    async def prompt_logprobs(self, prompt_token_ids: list[int], scored_from: int = 0) -> list[float | None]:
        self.requests += 1
        logprobs = await self._engine.prompt_logprobs(prompt_token_ids, scored_from)
        self.logprob_positions += sum(lp is not None for lp in logprobs)
        return logprobs


def _start_engine(settings):
    from flip_reward.service import load_embedder, load_vllm_engine

    return load_vllm_engine(settings), load_embedder(settings)


def run_raw(items: list[dict]) -> dict:
    from flip_reward.config import Settings

    settings = Settings()

    async def main() -> dict:
        engine, embedder = await asyncio.to_thread(_start_engine, settings)
        embedder.encode(["warm up"])
        try:
            started = time.perf_counter()
            results = await score_raw(engine, embedder, settings, items)
            seconds = time.perf_counter() - started
        finally:
            await engine.shutdown()
        rewards = [r.reward for r in results if r.reward is not None]
        return {
            "items": len(items),
            "seconds": seconds,
            "rewards_per_s": len(items) / seconds,
            "tokens_per_reward": sum(r.completion_tokens for r in results) / len(items),
            "mean_reward": statistics.fmean(rewards),
        }

    return asyncio.run(main())


async def _singles_in_process(scorer, items: list[dict], options, concurrency: int) -> tuple[float, list]:
    """`concurrency` callers, each scoring one item at a time (closed loop), as trainers send singles."""
    from flip_reward.scoring.scorer import ScoreItem

    queue, results = list(enumerate(items))[::-1], [None] * len(items)

    async def worker() -> None:
        while queue:
            k, item = queue.pop()
            (results[k],) = await scorer.score([ScoreItem(item["prompt"], item["response"], id=item["id"])], options)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, results


# (split_prefill, baseline_from_cache): before is the old way (every request computed whole but for
# the system prompt); "cached baseline" reads the PMI baseline's shared head from the prefix cache;
# after also prefills the response without logprobs and scores the instructions from the cache.
LIKELIHOOD_ARMS = {"before": (False, False), "cached baseline": (False, True), "after": (True, True)}
ARM_LABELS = {
    "before": "before: one request per instruction",
    "cached baseline": "+ PMI baseline from cache",
    "after": "after: + prefill, then from cache",
}


def run_likelihood_ab(
    items: list[dict], concurrency: int = 64, round_items: int = 64, arms: tuple[str, ...] = tuple(LIKELIHOOD_ARMS)
) -> dict:
    """The likelihood method before (every instruction in one request, the real one from the response
    on) and after (the response prefilled without logprobs, the instructions scored from the prefix
    cache), on one engine: rounds of `round_items` items, each scored by both arms as `concurrency`
    concurrent singles, the order alternating and the prefix cache emptied before each, so the
    machine's load changes hit both arms alike."""
    from bench.experiments import experiment_scorer
    from flip_reward.config import Settings

    settings = Settings(method="likelihood")
    options = score_options(settings)

    async def main() -> dict:
        engine, _ = await asyncio.to_thread(_start_engine, settings)
        counter = LogprobCounter(engine)
        scorers = {arm: experiment_scorer(counter, None, settings, likelihood_arm=LIKELIHOOD_ARMS[arm]) for arm in arms}
        empty = {"seconds": 0.0, "logprob_positions": 0, "requests": 0, "prompt_tokens": 0}
        totals = {arm: {**empty, "rewards": [], "rounds": []} for arm in scorers}
        try:
            for scorer in scorers.values():  # warm-up, not measured
                await _singles_in_process(scorer, items[-WARM_UP:], options, min(WARM_UP, concurrency))
            rounds = [items[k : k + round_items] for k in range(0, len(items) - WARM_UP, round_items)]
            for r, chunk in enumerate(rounds):
                for arm in list(scorers) if r % 2 == 0 else list(scorers)[::-1]:  # ABC CBA: drift hits all
                    await engine._llm.reset_prefix_cache()
                    positions, requests = counter.logprob_positions, counter.requests
                    seconds, results = await _singles_in_process(scorers[arm], chunk, options, concurrency)
                    t = totals[arm]
                    t["seconds"] += seconds
                    t["rounds"].append({"round": r, "items": len(chunk), "seconds": seconds})
                    t["logprob_positions"] += counter.logprob_positions - positions
                    t["requests"] += counter.requests - requests
                    t["rewards"] += [res.reward for res in results]
                    t["prompt_tokens"] += sum(res.prompt_tokens or 0 for res in results)
                    print(f"round {r} {arm}: {len(chunk)} items in {seconds:.1f} s", file=sys.stderr, flush=True)
        finally:
            await engine.shutdown()
        n = len(totals["before"]["rewards"])
        out: dict = {"items": n, "concurrency": concurrency, "rounds": len(rounds)}
        for arm, t in totals.items():
            out[arm] = {
                "items": n,
                "seconds": t["seconds"],
                "rewards_per_s": n / t["seconds"],
                "logprob_tokens_per_reward": t["logprob_positions"] / n,
                "engine_requests_per_reward": t["requests"] / n,
                "prompt_tokens_per_item": t["prompt_tokens"] / n,  # the real instruction's prompt
                "rounds": t["rounds"],
            }
        for arm in scorers:
            pairs = list(zip(totals["before"]["rewards"], totals[arm]["rewards"]))
            out[arm]["max_abs_reward_diff"] = max(abs(a - b) for a, b in pairs if None not in (a, b))
            out[arm]["rewards_identical"] = sum(a == b for a, b in pairs)
            out[arm]["speedup"] = out[arm]["rewards_per_s"] / out["before"]["rewards_per_s"]
        return out

    return asyncio.run(main())


def likelihood_ab_table(ab: dict) -> str:
    header = (
        f"{'likelihood, ' + str(ab['concurrency']) + ' concurrent singles':<40}{'items':>6}{'rewards/s':>11}"
        f"{'logprob tok/reward':>20}{'requests/reward':>17}{'per round, s':>14}{'/before':>9}"
        f"{'same rewards':>14}{'max |diff|':>12}"
    )
    lines = [header, "-" * len(header)]
    for arm, label in ARM_LABELS.items():
        if arm not in ab:
            continue
        r = ab[arm]
        per_round = " ".join(f"{x['seconds']:.0f}" for x in r["rounds"])
        lines.append(
            f"{label:<40}{r['items']:>6}{r['rewards_per_s']:>11.2f}{r['logprob_tokens_per_reward']:>20.1f}"
            f"{r['engine_requests_per_reward']:>17.2f}{per_round:>14}{r['speedup']:>8.2f}x"
            f"{str(r['rewards_identical']) + '/' + str(r['items']):>14}{r['max_abs_reward_diff']:>12.3g}"
        )
    lines.append(
        f"({ab['rounds']} rounds of {ab['items'] // ab['rounds']} items, the arms' order reversed each round; "
        f"the prefix cache emptied before each arm; responses: {ab.get('responses', 'all')}, "
        f"{ab['before']['prompt_tokens_per_item']:.0f} prompt tokens per item)"
    )
    return "\n".join(lines)


def _naive_prompts(items: list[dict], tokenizer, settings):
    """The service's own reconstruction prompts (method generate) as token ids, after its copy guard."""
    from flip_reward.scoring.fitting import PromptFitter
    from flip_reward.scoring.methods.generate import Generate
    from flip_reward.scoring.scorer import ScoreItem, apply_copy_guard

    fitter = PromptFitter(tokenizer, settings.max_model_len, settings.strip_think)
    items = [ScoreItem(i["prompt"], i["response"]) for i in items]
    if settings.copy_guard:
        items = [apply_copy_guard(item, fitter, settings.copy_guard_words)[0] for item in items]
    method, options = Generate(fitter, settings, None), score_options(settings, "generate")
    return [method.prepare(item, options) for item in items]


def _similarity(items: list[dict], raw_outputs: list[str], settings) -> list[float]:
    from flip_reward.scoring.parse import parse_direct, parse_instruction
    from flip_reward.scoring.similarity import word_f1

    parse = parse_instruction if settings.prompt_mode == "paper" else parse_direct
    return [word_f1(parse(raw).instruction or "", i["prompt"]) for raw, i in zip(raw_outputs, items)]


def run_naive(items: list[dict]) -> dict:
    """FLIP's reference code path: HF generate per sample (greedy), parse, word F1."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flip_reward.config import Settings
    from flip_reward.models import resolve_llm

    settings = Settings()
    path = resolve_llm(settings.model, settings.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    # The engine's device: on a GPU box the naive pipeline runs there too, or "x naive" is unfair.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16).to(device).eval()
    prepared = _naive_prompts(items, tokenizer, settings)
    started = time.perf_counter()
    raw, tokens = [], 0
    with torch.inference_mode():
        for p in prepared:
            ids = torch.tensor([p.token_ids], device=device)
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=settings.max_tokens,
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
            )
            new = out[0, ids.shape[1] :]
            tokens += len(new)
            raw.append(p.answer_prefix + tokenizer.decode(new, skip_special_tokens=True))
    rewards = _similarity(items, raw, settings)
    seconds = time.perf_counter() - started
    return {
        "items": len(items),
        "seconds": seconds,
        "rewards_per_s": len(items) / seconds,
        "tokens_per_reward": tokens / len(items),
        "mean_reward": statistics.fmean(rewards),
        "device": device,
    }


def in_subprocess(phase: str, items: list[dict], **params) -> dict:
    RESULTS.mkdir(parents=True, exist_ok=True)
    job = RESULTS / f".{phase}-items.json"
    result = RESULTS / f".{phase}-result.json"
    job.write_text(json.dumps({"items": items, "params": params}))
    result.unlink(missing_ok=True)
    out = subprocess.run(
        [sys.executable, __file__, "--phase", phase, "--job", str(job)], capture_output=True, text=True, cwd=ROOT
    )
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
            [
                sys.executable,
                "-m",
                "flip_reward.cli",
                "serve",
                "--port",
                str(self.port),
                "--max-queued-items",
                str(QUEUE_BOUND),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
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
    return {
        "items": n,
        "seconds": seconds,
        "rewards_per_s": n / seconds,
        "p50_s": latencies[len(latencies) // 2],
        "p99_s": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "tokens_per_reward": tokens / n,
    }


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
            r = await client.post("/batch_reward", json={"items": items[start : start + chunk]})
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
    shed = 0  # of the 429s: admitted, then refused before starting when it could no longer finish
    for r in responses:
        if isinstance(r, BaseException):
            key = f"client error {type(r).__name__}"
        elif r.status_code == 200:
            key = "200 reward" if r.json()["reward"] is not None else "200 null reward"
        else:
            key = str(r.status_code)
            shed += r.status_code == 429 and r.json()["error"]["type"] == "shed"
        counts[key] = counts.get(key, 0) + 1
    # A reward, or a status a trainer retries before any work was done (429, 503); never a 504 or a null.
    ok = set(counts) <= {"200 reward", "429", "503"} and sum(counts.values()) == len(items)
    return {
        "requests": len(items),
        "queue_bound": QUEUE_BOUND,
        "seconds": seconds,
        "outcomes": counts,
        "shed_429": shed,
        "every_request_answered_reward_or_429": ok,
    }


class CpuHog:
    """A bounded busy loop in another process: the machine slows down after the server measured its
    rate, as with a neighbour on the box or a loaded CI machine."""

    def __init__(self, seconds: float) -> None:
        code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
        self.process = subprocess.Popen([sys.executable, "-c", code])

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


# --- the run


def run_burst_only(method: str | None, cpu_hog: bool = False) -> None:
    if method:
        os.environ["FLIP_METHOD"] = method
    pairs = load_pairs()
    server = Server(RESULTS / "server.log")
    hog = None
    try:
        server.wait_ready()
        warm = asyncio.run(singles(server.url, take(pairs, len(pairs) - 32, 32), 8))
        print(f"warm-up: 32 singles at {warm['rewards_per_s']:.2f} rewards/s", flush=True)
        hog = CpuHog(900) if cpu_hog else None  # after the warm-up: the rate it measured goes stale
        b = asyncio.run(burst(server.url, take(pairs, 0, BURST)))
    finally:
        if hog is not None:
            hog.stop()
        server.stop()
    b["cpu_hog"] = cpu_hog
    print(
        f"burst{' beside a CPU hog' if cpu_hog else ''}: {b['requests']} singles, queue bound {b['queue_bound']}: "
        f"{b['outcomes']} ({b['shed_429']} of the 429s shed before starting) in {b['seconds']:.1f} s "
        f"-> {'OK' if b['every_request_answered_reward_or_429'] else 'FAILED'}"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"burst-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "warm_up": warm, "burst": b}, indent=2
        )
    )
    print(f"wrote {out}")


def run_likelihood_ab_only(args: argparse.Namespace) -> None:
    pairs = load_pairs(LONG_RESPONSE_CHARS if args.ab_responses == "long" else (1, MAX_RESPONSE_CHARS))
    items = take(pairs, 0, args.ab_items + WARM_UP)  # the last WARM_UP: the warm-up
    print(
        f"likelihood before/after: {args.ab_items} items ({args.ab_responses} responses, {len(pairs)} to draw from), "
        f"{args.concurrency} concurrent singles, rounds of {args.round_items}",
        flush=True,
    )
    arms = tuple(args.ab_arms.split(","))
    if "before" not in arms or not set(arms) <= set(LIKELIHOOD_ARMS):
        raise SystemExit(f"--ab-arms: 'before' and any of {', '.join(LIKELIHOOD_ARMS)}, comma-separated")
    ab = in_subprocess(
        "likelihood_ab", items, concurrency=args.concurrency, round_items=args.round_items, arms=list(arms)
    )
    ab["responses"] = args.ab_responses
    table = likelihood_ab_table(ab)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"likelihood-ab-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "machine": platform.platform(),
                "cpus": os.cpu_count(),
                "seed": SEED,
                "likelihood_ab": ab,
                "table": table,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=256, help="items per service phase (and for the raw engine)")
    parser.add_argument("--single-items", type=int, default=32, help="items for concurrency 1")
    parser.add_argument("--naive-items", type=int, default=16, help="items for the naive pipeline (slow)")
    parser.add_argument(
        "--method",
        choices=["likelihood", "generate"],
        help="how the service and the raw engine score (default: the server's default)",
    )
    parser.add_argument(
        "--burst-only",
        action="store_true",
        help="only the burst, after a warm-up of 32 singles (a quick backpressure check)",
    )
    parser.add_argument(
        "--cpu-hog",
        action="store_true",
        help="--burst-only: run the burst beside a busy loop in another process (a machine that slows down)",
    )
    parser.add_argument(
        "--likelihood-ab",
        action="store_true",
        help="only the likelihood method before/after (one request per instruction vs a prefill "
        "first), in one engine process, interleaved",
    )
    parser.add_argument("--ab-items", type=int, default=128, help="items each likelihood arm scores")
    parser.add_argument("--round-items", type=int, default=64, help="items per interleaved likelihood round")
    parser.add_argument(
        "--ab-arms",
        default=",".join(LIKELIHOOD_ARMS),
        help="the likelihood ways to compare, comma-separated (before is the reference)",
    )
    parser.add_argument(
        "--ab-responses",
        choices=["all", "long"],
        default="all",
        help=f"the likelihood rounds' items: all pairs (responses up to {MAX_RESPONSE_CHARS} characters) or only "
        f"long responses ({LONG_RESPONSE_CHARS[0]}-{LONG_RESPONSE_CHARS[1]} characters)",
    )
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent singles in the likelihood rounds")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:  # a subprocess phase: items in, one JSON line out
        job = json.loads(Path(args.job).read_text())
        phases = {"raw": run_raw, "naive": run_naive, "likelihood_ab": run_likelihood_ab}
        data = phases[args.phase](job["items"], **job["params"])
        Path(args.job).with_name(f".{args.phase}-result.json").write_text(json.dumps(data))
        return
    if args.burst_only:
        run_burst_only(args.method, args.cpu_hog)
        return
    if args.likelihood_ab:
        run_likelihood_ab_only(args)
        return

    from flip_reward.config import Settings
    from flip_reward.models import BUILTIN_LLM_NAME

    if args.method:  # the server and the raw-engine subprocess read it from the environment
        os.environ["FLIP_METHOD"] = args.method
    settings = Settings()
    pairs = load_pairs()
    n = args.items
    sets = {name: take(pairs, k * n, n) for k, name in enumerate(["c64", "c32", "c8", "batch_all", "batch_32"])}
    sets["c1"] = take(pairs, 5 * n, args.single_items)
    sets["naive"] = take(pairs, 5 * n + args.single_items, args.naive_items)
    print(f"workload: {len(pairs)} real pairs (seed {SEED}), {n} items per phase, method {settings.method}", flush=True)

    results: dict = {}
    RESULTS.mkdir(parents=True, exist_ok=True)
    # The raw engine runs first and the service's main phase right after it: the machine's load
    # changes over minutes. Not at the same time: two engines on a small machine crash (measured:
    # with every core bound by both, the raw engine aborted while the server idled).
    print("raw engine (LLM.generate, one call) ...", flush=True)
    results["raw_engine"] = in_subprocess("raw", sets["c64"])
    if settings.method == "likelihood":
        print("likelihood before/after (in process, 64 concurrent singles) ...", flush=True)
        results["likelihood_ab"] = in_subprocess("likelihood_ab", sets["c64"] + take(pairs, 6 * n, WARM_UP))
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
    rows += [
        (k.replace("service_", "service "), v)
        for k, v in results.items()
        if k.startswith("service_") and isinstance(v, dict) and "rewards_per_s" in v
    ]
    header = (
        f"{'phase':<28}{'items':>6}{'rewards/s':>11}{'p50 s':>8}{'p99 s':>8}{'tok/reward':>11}"
        f"{'/ceiling':>10}{'/naive':>8}"
    )
    lines = [header, "-" * len(header)]
    for name, r in rows:
        p50 = f"{r['p50_s']:.2f}" if "p50_s" in r else "-"
        p99 = f"{r['p99_s']:.2f}" if "p99_s" in r else "-"
        lines.append(
            f"{name:<28}{r['items']:>6}{r['rewards_per_s']:>11.2f}{p50:>8}{p99:>8}"
            f"{r['tokens_per_reward']:>11.1f}{r['rewards_per_s'] / ceiling:>10.2f}"
            f"{r['rewards_per_s'] / naive:>8.1f}"
        )
    b = results["burst"]
    lines.append(
        f"burst: {b['requests']} singles, queue bound {b['queue_bound']}: {b['outcomes']} "
        f"in {b['seconds']:.1f} s -> {'OK' if b['every_request_answered_reward_or_429'] else 'FAILED'}"
    )
    lines.append(f"service peak RSS (server + engine processes): {results['service_peak_rss_mib']:.0f} MiB")
    engine = results["service_info"]["engine"]
    lines.append(
        f"prefix cache: {engine['prefix_cache']['hits']} of {engine['prefix_cache']['queries']} prompt "
        f"tokens reused; embedding cache: {results['service_info']['embedding_cache']}"
    )
    if "likelihood_ab" in results:
        lines.append(likelihood_ab_table(results["likelihood_ab"]))
    table = "\n".join(lines)
    print(table)

    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "model": settings.model or BUILTIN_LLM_NAME,
        "method": settings.method,
        "prompt_mode": settings.prompt_mode,
        "max_tokens": settings.max_tokens,
        "items": n,
        "seed": SEED,
    }
    out = RESULTS / f"throughput-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"meta": meta, "results": results, "table": table}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
