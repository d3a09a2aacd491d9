"""The per-request floor under the front's ceiling: what a request costs the front before any scoring,
and what the scoring path costs as singles against a batch without HTTP.

    .venv/bin/python bench/front_floor.py [--requests 6000]

HTTP (64 concurrent callers on keep-alive connections, bench/front_ceiling.py's client), front CPU
per request:
- `uvicorn, bare ASGI app`: uvicorn answering a fixed body, no framework;
- `FastAPI, minimal route`: one POST route validating a small pydantic body;
- `service /reward, nothing to score`: the real service on the null engine, a response that is
  empty (the floor reward: every step of the serving path, no tokenization, no engine);
- `service /batch_reward, nothing to score`: the same items 256 to a request, per item.
In process (the service's Scorer on the null engine, no HTTP), front CPU per item on the same real
eval items: one /batch_reward-sized call, and singles 1, 8 and 64 at a time.

A table on stdout and JSON in bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from bench.front_ceiling import RESULTS, Connection, Front, callers, write_json  # noqa: E402
from bench.throughput import load_pairs, take  # noqa: E402

EMPTY = {"prompt": "Say hi", "response": ""}


class MinimalItem(BaseModel):
    prompt: str
    response: str


def serve_minimal(kind: str, port: int) -> None:
    import uvicorn

    if kind == "bare":

        async def app(scope, receive, send):  # type: ignore[no-untyped-def]
            if scope["type"] != "http":
                return
            more = True
            while more:
                more = (await receive()).get("more_body", False)
            body = b'{"reward": 0.5}'
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        uvicorn.run(app, port=port, log_level="warning")
        return
    from fastapi import FastAPI, Response

    fastapi_app = FastAPI()

    @fastapi_app.post("/reward")
    async def reward(body: MinimalItem) -> Response:
        return Response('{"reward": 0.5}', media_type="application/json")

    uvicorn.run(fastapi_app, port=port, log_level="warning")


class MinimalServer(Front):
    """A bare uvicorn app or a minimal FastAPI one, in a subprocess, measured like a front."""

    def __init__(self, kind: str) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, __file__, "--serve", kind, str(self.port)], cwd=ROOT)

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the server did not start")


def _post_many(url: str, path: str, body: dict, requests: int, concurrency: int) -> float:
    """Seconds for `concurrency` callers to post `body` `requests` times (front_ceiling's callers)."""

    async def send(connection: Connection, one: dict) -> None:
        await connection.post(path, one)

    return asyncio.run(callers([url], [body] * requests, concurrency, send))


def http_floor(server, path: str, body: dict, requests: int, per_request: int = 1) -> dict:
    # Batches one at a time: 64 batches of 256 at once are past the queue bound (1024 items, 429).
    concurrency = 64 if per_request == 1 else 1
    _post_many(server.url, path, body, max(200, requests // 20), concurrency)  # warm-up
    cpu = server.cpu_s()
    seconds = _post_many(server.url, path, body, requests, concurrency)
    units = requests * per_request
    return {"units": units, "seconds": seconds, "front_cpu_ms_per_unit": (server.cpu_s() - cpu) / units * 1e3}


def in_process(items: int, rounds: int) -> dict:
    """The Scorer on the null engine: CPU per item, one big call against singles, same items."""
    import gc

    from null_engine import NullEngine

    from bench.throughput import score_options
    from flip_reward.config import Settings
    from flip_reward.scoring.scorer import ScoreItem, Scorer

    settings = Settings(log_level="warning")
    scorer = Scorer(NullEngine.start(settings), None, settings)
    options = score_options(settings, "likelihood")
    pairs = load_pairs()
    gc.collect()
    gc.freeze()
    ways = ["batch", "c1", "c8", "c64"]
    cpu = dict.fromkeys(ways, 0.0)

    async def singles(work: list, concurrency: int) -> None:
        async def caller() -> None:
            while work:
                await scorer.score([work.pop()], options)

        await asyncio.gather(*(caller() for _ in range(concurrency)))

    async def run() -> None:
        await scorer.score([ScoreItem(p["prompt"], p["response"]) for p in take(pairs, len(pairs) - 64, 64)], options)
        for r in range(rounds):
            chunk = [ScoreItem(p["prompt"], p["response"]) for p in take(pairs, r * items, items)]
            for way in ways[r % 4 :] + ways[: r % 4]:  # rotated: no way always first
                started = time.process_time()
                if way == "batch":
                    await scorer.score(chunk, options)
                else:
                    await singles(list(chunk), int(way[1:]))
                cpu[way] += time.process_time() - started
        await scorer.close()

    asyncio.run(run())
    return {way: {"cpu_ms_per_item": cpu[way] / (items * rounds) * 1e3} for way in ways}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--items", type=int, default=256, help="in process: items per round")
    parser.add_argument("--rounds", type=int, default=8, help="in process: rounds")
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_minimal(args.serve[0], int(args.serve[1]))
        return
    http: dict = {}
    for label, start in (("uvicorn, bare ASGI app", "bare"), ("FastAPI, minimal route", "fastapi")):
        server = MinimalServer(start)
        try:
            server.wait_ready()
            http[label] = http_floor(server, "/reward", EMPTY, args.requests)
        finally:
            server.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    front = Front(RESULTS / "front-floor.log", ".")
    try:
        front.wait_ready()
        http["service /reward, nothing to score"] = http_floor(front, "/reward", EMPTY, args.requests)
        http["service /batch_reward, nothing to score (per item)"] = http_floor(
            front, "/batch_reward", {"items": [EMPTY] * 256}, max(1, args.requests // 256), per_request=256
        )
    finally:
        front.stop()
    scorer = in_process(args.items, args.rounds)
    lines = [f"{'HTTP, 64 concurrent callers':<55}{'front CPU ms':>14}", "-" * 69]
    lines += [f"{label:<55}{r['front_cpu_ms_per_unit']:>14.3f}" for label, r in http.items()]
    lines += ["", f"{'the Scorer in process, likelihood, null engine':<55}{'CPU ms/item':>14}", "-" * 69]
    lines += [f"{way:<55}{r['cpu_ms_per_item']:>14.3f}" for way, r in scorer.items()]
    table = "\n".join(lines)
    print(table)
    write_json("front-floor", {"http": http, "in_process": scorer, "table": table})


if __name__ == "__main__":
    main()
