"""Front ceiling: what one front process (HTTP, validation, tokenization, prompt building, guards,
scoring, the micro-batcher, JSON) can serve when the engine costs nothing.

    .venv/bin/python bench/front_ceiling.py [--methods likelihood,generate] [--items 256] [--fronts 1,2]
    .venv/bin/python bench/front_ceiling.py --profile docs/results/front-profile.svg [--profile-items 1024]

The real service (flip_reward.main.create_app, uvicorn, the real tokenizer and embedder) runs in a subprocess
with bench/null_engine.py's NullEngine, which answers in the real shapes at no cost. For each method:
single /reward requests from 1, 8 and 64 concurrent callers (closed loop) and /batch_reward of
--batch-size items per request, each phase on items the service has not seen. Per phase: rewards/s,
and rewards per CPU-second of the front processes (the ceiling of a front with a core to itself, apart
from the load generator, which shares this machine). With --fronts 1,2: the same on N fronts side by
side, the callers spread over them, as several `flip-reward serve` processes in remote mode would
share one `vllm serve` (README, "More than one front process"). --profile: py-spy samples the one front
during 64 concurrent singles of the default method; a flame graph SVG, its raw stacks beside it, and
the top costs by own time on stdout.

A table on stdout and JSON in bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.throughput import RESULTS, SEED, load_pairs, take  # noqa: E402

WARM_UP = 64


# --- the front, in a subprocess


def serve_front(port: int, tree: str) -> None:
    # The service from `tree` (this checkout, or another one for a before/after run in one go), with
    # the null engine from this one.
    sys.path[:0] = [str(Path(tree).resolve()), str(Path(__file__).parent)]
    from null_engine import NullEngine

    from flip_reward.config import Settings
    from flip_reward.main import create_app
    from flip_reward.server import serve
    from flip_reward.service import FlipService

    settings = Settings(port=port, log_level="warning")
    serve(create_app(settings, FlipService(settings, engine_factory=NullEngine.start)), settings)


class Front:
    def __init__(self, log: Path, tree: str) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(self.port), "--tree", tree],
            cwd=ROOT,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the front exited during start (exit {self.process.returncode})")
            try:
                if httpx.get(self.url + "/ready", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError("the front was not ready in time")

    def cpu_s(self) -> float:
        import psutil

        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


# --- the load: a minimal HTTP/1.1 keep-alive client on asyncio streams. httpx spends more CPU per
# request than the front does, so with it the load generator, not the front, set the ceiling.


class Connection:
    def __init__(self, url: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: dict) -> dict:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        data = json.dumps(body).encode()
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ")[1])
        length = next(int(h.split(":")[1]) for h in head if h.lower().startswith("content-length:"))
        answer = json.loads(await reader.readexactly(length))
        if status != 200:
            raise RuntimeError(f"{path}: {status} {answer}")
        return answer

    async def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()


def _check(body: dict, n: int) -> None:
    rewards = [r["reward"] for r in body["results"]] if "results" in body else [body["reward"]]
    if len(rewards) != n or any(r is None for r in rewards):
        raise RuntimeError(f"an item came back without a reward: {body}")


async def callers(urls: list[str], work: list, count: int, send) -> float:
    """Seconds for `count` callers (one connection each, spread over the fronts) to empty `work`."""
    connections = [Connection(urls[k % len(urls)]) for k in range(count)]

    async def caller(connection: Connection) -> None:
        while work:
            await send(connection, work.pop())

    try:
        started = time.perf_counter()
        await asyncio.gather(*(caller(c) for c in connections))
        return time.perf_counter() - started
    finally:
        for c in connections:
            await c.close()


async def singles(urls: list[str], items: list[dict], concurrency: int, method: str) -> float:
    """`concurrency` callers, each posting one /reward at a time (closed loop)."""

    async def send(connection: Connection, item: dict) -> None:
        _check(await connection.post("/reward", {**item, "method": method}), 1)

    return await callers(urls, list(reversed(items)), concurrency, send)


async def batches(urls: list[str], items: list[dict], size: int, method: str) -> float:
    """/batch_reward of `size` items per request, one request in flight per front."""

    async def send(connection: Connection, chunk: list[dict]) -> None:
        _check(await connection.post("/batch_reward", {"items": chunk, "method": method}), len(chunk))

    chunks = [items[k : k + size] for k in range(0, len(items), size)]
    return await callers(urls, chunks[::-1], len(urls), send)


def measure(fronts: list[Front], phase, *args) -> dict:
    cpu = [f.cpu_s() for f in fronts]
    seconds = asyncio.run(phase([f.url for f in fronts], *args))
    return {"items": len(args[0]), "seconds": seconds, "front_cpu_s": sum(f.cpu_s() - c for f, c in zip(fronts, cpu))}


def start_fronts(count: int, tree: str = ".") -> list[Front]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    fronts = [Front(RESULTS / f"front-{k}.log", tree) for k in range(count)]
    try:
        for f in fronts:
            f.wait_ready()
    except BaseException:
        for f in fronts:
            f.stop()
        raise
    return fronts


PHASES = ("batch", "c64", "c8", "c1")


def run_fronts(tree: str, count: int, method: str, items: dict[str, list[dict]], batch_size: int) -> dict:
    """Every phase of `method` on `count` fresh fronts from `tree`, after a warm-up."""
    fronts = start_fronts(count, tree)
    out: dict = {}
    try:
        urls = [f.url for f in fronts]
        asyncio.run(singles(urls, items["warm-up"], 8, method))
        for name in PHASES:
            if name == "batch":
                out[name] = measure(fronts, batches, items[name], batch_size, method)
            else:
                out[name] = measure(fronts, singles, items[name], int(name[1:]), method)
    finally:
        for f in fronts:
            f.stop()
    return out


def run_all(configs: list[tuple[str, str, int]], methods: list[str], pairs: list[dict], args) -> dict:
    """`rounds` rounds; in each, every (label, tree, fronts) config runs every method's phases, the
    configs' order reversed every other round so that the machine's drift hits them alike. Each
    front process sees items it has not seen (its caches only help as in training)."""
    sizes = {"warm-up": WARM_UP, "batch": args.items, "c64": args.items, "c8": args.items // 2, "c1": args.items // 8}
    if sum(sizes.values()) > len(pairs):  # a phase would get items the front already scored (its caches hit)
        most = (len(pairs) - WARM_UP) * 8 // 21
        raise SystemExit(
            f"--items {args.items}: one front's phases need {sum(sizes.values())} items, there are "
            f"{len(pairs)}; use --items {most} or fewer"
        )
    totals: dict = {}
    start = 0
    for r in range(args.rounds):
        for label, tree, count in configs if r % 2 == 0 else configs[::-1]:
            for method in methods:
                items = {}
                for name, n in sizes.items():
                    items[name], start = take(pairs, start, n), start + n
                out = run_fronts(tree, count, method, items, args.batch_size)
                for name, m in out.items():
                    t = totals.setdefault(
                        f"{label}|{count}|{method}|{name}", {"items": 0, "seconds": 0.0, "front_cpu_s": 0.0}
                    )
                    for k in t:
                        t[k] += m[k]
                line = ", ".join(f"{name} {m['items'] / m['seconds']:.1f}" for name, m in out.items())
                print(f"  round {r}, {label}, {count} front(s), {method}: {line} rewards/s", flush=True)
    results = {}
    for key, t in totals.items():
        label, count, method, name = key.split("|")
        results.setdefault(label, {}).setdefault(count, {}).setdefault(method, {})[name] = {
            **t,
            "rewards_per_s": t["items"] / t["seconds"],
            "rewards_per_front_cpu_s": t["items"] / t["front_cpu_s"] if t["front_cpu_s"] else None,
        }
    return results


def table(results: dict, batch_size: int) -> str:
    header = (
        f"{'tree':<10}{'fronts':>7}  {'method':<12}{'phase':<22}{'items':>6}{'rewards/s':>11}{'per front CPU-s':>17}"
        f"{'/batch':>8}{'/1 front':>10}{'/first tree':>13}"
    )
    lines = [header, "-" * len(header)]
    names = {"batch": f"/batch_reward x{batch_size}", "c64": "singles c64", "c8": "singles c8", "c1": "singles c1"}
    first = next(iter(results.values()))
    for label, counts in results.items():
        for count, methods in counts.items():
            for method, phases in methods.items():
                for name, r in phases.items():
                    rate = r["rewards_per_s"]
                    one = counts.get("1", {}).get(method, {}).get(name)
                    base = first.get(count, {}).get(method, {}).get(name)
                    per_cpu = r["rewards_per_front_cpu_s"] or float("nan")
                    lines.append(
                        f"{label:<10}{count:>7}  {method:<12}{names[name]:<22}{r['items']:>6}{rate:>11.1f}"
                        f"{per_cpu:>17.1f}{rate / phases['batch']['rewards_per_s']:>7.2f}x"
                        f"{rate / one['rewards_per_s'] if one else float('nan'):>9.2f}x"
                        f"{rate / base['rewards_per_s'] if base else float('nan'):>12.2f}x"
                    )
    return "\n".join(lines)


# --- the profile


def top_costs(raw: Path, k: int = 5) -> list[tuple[str, float]]:
    """The k frames with the most own time (share of the samples), from py-spy's raw stacks."""
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        own[stack.split(";")[-1].strip()] += n
    return [(frame, n / total) for frame, n in own.most_common(k)]


def run_profile(
    svg: Path, items: int, method: str | None, pairs: list[dict], tree: str = ".", phase: str = "c64"
) -> dict:
    from flip_reward.config import Settings

    method = method or Settings().method
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    (front,) = start_fronts(1, tree)
    raw = svg.with_suffix(".txt")
    svg.parent.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(singles([front.url], take(pairs, len(pairs) - WARM_UP, WARM_UP), 8, method))  # warm-up
        # Two samplers on the same process: the flame graph, and raw stacks for the top costs. Only
        # samples that hold the GIL: one front is one core of Python, so that is what bounds it.
        spies = [
            subprocess.Popen(
                [str(spy), "record", "--pid", str(front.process.pid), "--rate", "500"]
                + ["--gil", "--format", fmt, "--output", str(path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for fmt, path in (("flamegraph", svg), ("raw", raw))
        ]
        time.sleep(1)  # attached
        if phase == "batch":
            r = measure([front], batches, take(pairs, 0, items), 256, method)
        else:
            r = measure([front], singles, take(pairs, 0, items), int(phase[1:]), method)
        for s in spies:
            s.send_signal(signal.SIGINT)
        for s in spies:
            _, err = s.communicate(timeout=120)
            if s.returncode not in (0, -signal.SIGINT):
                raise RuntimeError(f"py-spy failed: {err.decode()[-2000:]}")
    finally:
        front.stop()
    costs = top_costs(raw)
    r["rewards_per_s"] = r["items"] / r["seconds"]
    print(f"profile: {method}, {phase}, {r['rewards_per_s']:.1f} rewards/s while sampled")
    print(f"flame graph: {svg}\nraw stacks: {raw}\ntop costs by own time:")
    for frame, share in costs:
        print(f"  {share:6.1%}  {frame}")
    return {"method": method, "phase": phase, "result": r, "top_costs": costs, "svg": str(svg), "raw": str(raw)}


def write_json(name: str, data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "seed": SEED,
        "command": " ".join(sys.argv),
    }
    out = RESULTS / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"meta": meta, **data}, indent=2))
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="likelihood,generate", help="comma-separated")
    parser.add_argument("--items", type=int, default=256, help="items for c64 and the batches (c8: half, c1: 1/8)")
    parser.add_argument("--batch-size", type=int, default=256, help="items per /batch_reward")
    parser.add_argument("--fronts", default="1", help="front counts to run, comma-separated (e.g. 1,2)")
    parser.add_argument(
        "--trees",
        default="this=.",
        help="label=checkout, comma-separated: the service from each (e.g. before=/tmp/flip-before,after=.)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds over every config (order reversed each round)")
    parser.add_argument("--profile", type=Path, help="profile one front with py-spy; the flame graph's path")
    parser.add_argument("--profile-items", type=int, default=2048, help="items scored while sampled")
    parser.add_argument("--profile-method", help="default: the server's method")
    parser.add_argument("--profile-phase", default="c64", help="c1, c8, c64 (singles) or batch (of 256)")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tree", default=".", help="--profile: the checkout whose service to profile")
    args = parser.parse_args()
    if args.serve:
        serve_front(args.serve, args.tree)
        return
    pairs = load_pairs()
    if args.profile:
        profile = run_profile(
            args.profile, args.profile_items, args.profile_method, pairs, args.tree, args.profile_phase
        )
        write_json("front-profile", profile)
        return
    methods = args.methods.split(",")
    trees = [t.split("=", 1) for t in args.trees.split(",")]
    configs = [(label, tree, int(c)) for label, tree in trees for c in args.fronts.split(",")]
    print(f"front ceiling: {len(pairs)} real pairs (seed {SEED}), methods {methods}, configs {configs}", flush=True)
    results = run_all(configs, methods, pairs, args)
    text = table(results, args.batch_size)
    print(text)
    write_json("front-ceiling", {"results": results, "table": text})


if __name__ == "__main__":
    main()
