"""Load and soak: many concurrent clients send a fixed number of requests to a flip-reward server
on this machine (loopback only), then report what came back.

Checks: every request id answered exactly once (the X-Request-ID echo), no 5xx (429 from the
admission limit counts as an answer, not a failure), p50/p99 latency, and the server's memory
(RSS) growth over the second half of the measured run, which must stay under a bound. The second
half, because the process settles in steps early on (allocator arenas and tensor caches for
shapes seen for the first time: one run stepped up 147 MiB within a second of the warm-up's end and
stayed flat within 2 MiB after), while a leak keeps climbing for as long as requests come.

    .venv/bin/python bench/soak.py                       # starts its own server (built-in models)
    .venv/bin/python bench/soak.py --url http://127.0.0.1:8000 --pid <server pid>
    .venv/bin/python bench/soak.py --clients 32 --requests 2000 --max-seconds 1800

Prints a table and writes JSON (default bench/results/soak.json). Exit code 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data" / "samples" / "selfinstruct_reconstruction_64.jsonl"
MIB = 1024 * 1024


def _require_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise SystemExit(f"soak: refusing {url}: only loopback addresses (127.0.0.0/8, ::1, localhost)")


def _payloads(n: int, seed: int) -> list[tuple[str, dict | bytes, int]]:
    """(path, body, what a correct server answers) for request i: mostly single rewards, some
    batches of 4, some chat-form items, and a few invalid ones (422) to exercise the error path."""
    rows = [json.loads(line) for line in SAMPLES.read_text().splitlines() if line.strip()]
    items = [{"prompt": r["instruction"], "response": r["response"]} for r in rows]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = rng.random()
        item = dict(rng.choice(items), id=f"item-{i}")
        if kind < 0.70:
            out.append(("/reward", item, 200))
        elif kind < 0.85:
            out.append(("/batch_reward", {"items": [dict(rng.choice(items), id=f"{i}-{k}") for k in range(4)]}, 200))
        elif kind < 0.95:
            messages = [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": item["prompt"]},
            ]
            out.append(("/reward", {"messages": messages, "response": item["response"]}, 200))
        else:
            out.append(("/reward", {"prompt": item["prompt"], "response": ["not", "a", "string"]}, 422))
    return out


def _rss(pid: int) -> tuple[int, int]:
    """(the server process's RSS, RSS of the server and all its children), bytes."""
    process = psutil.Process(pid)
    own = process.memory_info().rss
    total = own
    for child in process.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return own, total


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


async def _send_all(
    url: str,
    requests: list[tuple[str, dict | bytes, int]],
    first_id: int,
    clients: int,
    deadline: float,
    api_key: str | None,
    log: dict,
) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(requests)):
        queue.put_nowait(index)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits, headers=headers) as http:

        async def client() -> None:
            while time.monotonic() < deadline:
                try:
                    index = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                path, body, expected = requests[index]
                request_id = f"soak-{first_id + index}"
                log["sent"][request_id] = expected
                started = time.perf_counter()
                try:
                    response = await http.post(path, json=body, headers={"X-Request-ID": request_id})
                except httpx.HTTPError as exc:
                    log["transport_errors"].append(f"{request_id}: {type(exc).__name__}")
                    continue
                latency = time.perf_counter() - started
                echoed = response.headers.get("x-request-id")
                log["answers"][echoed] += 1
                log["statuses"][response.status_code] += 1
                log["latencies"].append(latency)
                if response.status_code != expected and response.status_code != 429:
                    log["unexpected"].append(f"{request_id}: {response.status_code} (expected {expected})")
                if response.status_code == 200 and path == "/reward" and response.json()["reward"] is None:
                    log["null_rewards"] += 1

        await asyncio.gather(*(client() for _ in range(clients)))


async def run_soak(
    url: str,
    pid: int | None,
    clients: int = 16,
    requests: int = 400,
    warmup: int = 32,
    max_seconds: float = 1200,
    max_late_rss_growth_mib: float = 64,
    seed: int = 0,
    api_key: str | None = None,
) -> dict:
    _require_loopback(url)
    deadline = time.monotonic() + max_seconds
    plan = _payloads(warmup + requests, seed)
    log = {
        "sent": {},
        "answers": Counter(),
        "statuses": Counter(),
        "latencies": [],
        "transport_errors": [],
        "unexpected": [],
        "null_rewards": 0,
    }

    await _send_all(url, plan[:warmup], 0, clients, deadline, api_key, log)
    rss_start = _rss(pid) if pid else None
    log["latencies"].clear()  # latency over the measured part only
    log["statuses"].clear()
    started = time.monotonic()
    # (seconds into the measured run, _rss(pid)) every second: a leak climbs, a warm-up levels off
    samples: list[tuple[float, tuple[int, int]]] = []

    async def sample_rss() -> None:
        while pid:
            await asyncio.sleep(1.0)
            samples.append((round(time.monotonic() - started, 1), _rss(pid)))

    sampler = asyncio.create_task(sample_rss())
    await _send_all(url, plan[warmup:], warmup, clients, deadline, api_key, log)
    sampler.cancel()
    elapsed = time.monotonic() - started
    rss_end = _rss(pid) if pid else None

    sent_ids = set(log["sent"])
    answered_twice = [i for i, n in log["answers"].items() if n > 1]
    unanswered = sorted(sent_ids - set(log["answers"]))
    stray = sorted(set(log["answers"]) - sent_ids)
    server_errors = sum(n for status, n in log["statuses"].items() if status >= 500)
    result = {
        "url": url,
        "clients": clients,
        "warmup_requests": warmup,
        "requests_planned": requests,
        "requests_sent": sum(1 for i in sent_ids if int(i.split("-")[1]) >= warmup),
        "requests_answered": len(log["latencies"]),
        "answered_exactly_once": not answered_twice and not unanswered and not stray,
        "unanswered": unanswered[:20],
        "answered_twice": answered_twice[:20],
        "transport_errors": log["transport_errors"][:20],
        "status_counts": {str(k): v for k, v in sorted(log["statuses"].items())},
        "unexpected_statuses": log["unexpected"][:20],
        "null_rewards_on_200": log["null_rewards"],
        "server_errors": server_errors,
        "elapsed_s": round(elapsed, 2),
        "requests_per_s": round(len(log["latencies"]) / elapsed, 2) if elapsed else None,
        "latency_p50_s": _round(_percentile(log["latencies"], 50)),
        "latency_p99_s": _round(_percentile(log["latencies"], 99)),
        "latency_max_s": _round(max(log["latencies"], default=None)),
        "stopped_by_time_limit": time.monotonic() >= deadline,
    }
    if pid:
        # index 0: the API process; 1: it with the engine's processes
        timeline = [[(at, round(rss[k] / MIB, 1)) for at, rss in samples] for k in (0, 1)]
        late = [late_rss_growth(timeline[k], rss_end[k] / MIB, elapsed, rss_start[k] / MIB) for k in (0, 1)]
        every = max(1, len(samples) // 20)
        result.update(
            {
                "rss_after_warmup_mib": round(rss_start[0] / MIB, 1),
                "rss_end_mib": round(rss_end[0] / MIB, 1),
                "rss_growth_mib": round((rss_end[0] - rss_start[0]) / MIB, 1),
                "rss_tree_after_warmup_mib": round(rss_start[1] / MIB, 1),
                "rss_tree_end_mib": round(rss_end[1] / MIB, 1),
                "rss_tree_peak_mib": round(max([rss_start[1]] + [rss[1] for _, rss in samples]) / MIB, 1),
                "rss_tree_growth_mib": round((rss_end[1] - rss_start[1]) / MIB, 1),
                "rss_tree_late_growth_mib": round(late[1], 1),
                "rss_late_growth_mib": round(late[0], 1),
                "rss_late_growth_bound_mib": max_late_rss_growth_mib,
                "rss_timeline_mib": timeline[0][::every],
                "rss_tree_timeline_mib": timeline[1][::every],
            }
        )
    result["passed"] = (
        result["answered_exactly_once"]
        and not log["transport_errors"]
        and not log["unexpected"]
        and server_errors == 0
        and not result["stopped_by_time_limit"]
        and (not pid or result["rss_late_growth_mib"] <= max_late_rss_growth_mib)
    )
    return result


def late_rss_growth(timeline: list[tuple[float, float]], end_mib: float, elapsed_s: float, start_mib: float) -> float:
    """RSS growth (MiB) from the first sample at or after half the measured run to its end; from
    the start when no sample lies there (a run shorter than the sampling interval)."""
    midway = next((mib for at, mib in timeline if at >= elapsed_s / 2), start_mib)
    return end_mib - midway


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _start_server(extra: list[str]) -> tuple[str, subprocess.Popen]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "flip_reward.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *extra],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url + "/ready", timeout=5).status_code == 200:
                return url, process
        except httpx.TransportError:
            pass
        time.sleep(1)
    process.kill()
    raise SystemExit("soak: the server did not become ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server (loopback only); unset: start one")
    parser.add_argument("--pid", type=int, help="the running server's pid, for RSS (with --url)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=400, help="measured requests, after the warm-up")
    parser.add_argument("--warmup", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=1200, help="stop sending after this long")
    parser.add_argument(
        "--max-late-rss-growth-mib",
        type=float,
        default=64,
        help="bound on the server's RSS growth over the second half of the measured run",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-arg", action="append", default=[], help="extra flag for the started server")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = parser.parse_args()

    process = None
    url, pid = args.url, args.pid
    if url is None:
        url, process = _start_server(args.server_arg)
        pid = process.pid
    try:
        result = asyncio.run(
            run_soak(
                url,
                pid,
                args.clients,
                args.requests,
                args.warmup,
                args.max_seconds,
                args.max_late_rss_growth_mib,
                args.seed,
                os.environ.get("FLIP_SOAK_API_KEY"),
            )
        )
    finally:
        if process is not None:
            process.terminate()
            process.wait(60)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
