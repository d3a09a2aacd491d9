"""The fleet's servers as the remote engine sees them: each server's state (requests outstanding,
failures and cool-down, the prompt prefixes sent to it, its connection pool) and how a host name
becomes one server per address (a headless Kubernetes Service: one per pod)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import httpx

from flip_reward import metrics

_COOLDOWN_BASE_S = 0.5  # a failed URL is skipped 1 s, 2 s, 4 s ... (at most 30 s) after each failure
_COOLDOWN_MAX_S = 30.0
AFFINITY_BLOCK = 32  # tokens per hashed prefix block (vLLM caches whole blocks; 32 is our block size)
_AFFINITY_BLOCKS_KEPT = 65536  # per server: about what a few GiB of KV cache hold for a small model


def prefix_block_hashes(token_ids: list[int], block: int = AFFINITY_BLOCK) -> list[int]:
    """One hash per whole block of the prompt, each covering every token before it (as vLLM's
    prefix cache keys its blocks): two prompts share the first k hashes iff they share k blocks."""
    hashes, previous = [], 0
    for end in range(block, len(token_ids) + 1, block):
        previous = hash((previous, tuple(token_ids[end - block : end])))
        hashes.append(previous)
    return hashes


class Pool:
    """One HTTP connection pool to a server; replaced after its lifetime, closed once idle."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.created = time.monotonic()
        self.in_use = 0


@dataclass
class Backend:
    url: str
    source: str = ""  # the configured URL it was resolved from
    down_until: float = 0.0  # monotonic time before which the URL is skipped
    failures: int = 0  # consecutive
    failures_total: int = 0
    requests_total: int = 0
    outstanding: int = 0  # requests sent and not answered
    last_error: str | None = None
    prefixes: OrderedDict[int, None] = field(default_factory=OrderedDict)  # block hashes sent here, LRU
    pool: Pool | None = None

    @property
    def up(self) -> bool:
        return time.monotonic() >= self.down_until

    def outstanding_gauge(self) -> float:
        return float(self.outstanding)

    def cooling_gauge(self) -> float:
        return float(not self.up)

    def mark_failed(self, problem: str) -> None:
        self.failures += 1
        self.failures_total += 1
        self.last_error = problem
        self.down_until = time.monotonic() + min(_COOLDOWN_BASE_S * 2**self.failures, _COOLDOWN_MAX_S)
        metrics.REMOTE_SERVER_FAILURES.labels(url=self.url).inc()

    def mark_ok(self) -> None:
        self.failures, self.down_until = 0, 0.0

    def matched_blocks(self, hashes: list[int]) -> int:
        """How many leading blocks of a prompt were sent here (and may still be in its cache)."""
        count = 0
        for h in hashes:
            if h not in self.prefixes:
                break
            count += 1
        return count

    def remember(self, hashes: list[int]) -> None:
        for h in hashes:
            self.prefixes[h] = None
            self.prefixes.move_to_end(h)
        while len(self.prefixes) > _AFFINITY_BLOCKS_KEPT:
            self.prefixes.popitem(last=False)

    def state(self) -> dict[str, Any]:
        cooling = max(0.0, self.down_until - time.monotonic())
        return {
            "url": self.url,
            "source": self.source,
            "outstanding": self.outstanding,
            "requests": self.requests_total,
            "failures": self.failures_total,
            "consecutive_failures": self.failures,
            "cooling_down": cooling > 0,
            "cooldown_left_s": round(cooling, 2),
            "last_error": self.last_error,
        }


class Connections:
    """Each server's HTTP connection pool, renewed after `lifetime_s`: new connections are new TCP
    connections (and DNS look-ups), which a Kubernetes Service spreads over its pods. A replaced
    pool is closed once its last request is answered."""

    def __init__(
        self,
        timeout: httpx.Timeout,
        headers: dict[str, str],
        max_connections: int,
        lifetime_s: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._timeout, self._headers, self._transport = timeout, headers, transport
        self._max_connections, self._lifetime_s = max_connections, lifetime_s
        self._retired: set[Pool] = set()
        self._closing: set[asyncio.Task] = set()  # retired pools' aclose(), referenced until done

    def acquire(self, backend: Backend) -> Pool:
        """The server's current pool (renewed past its lifetime), counted in use until release()."""
        pool, lifetime = backend.pool, self._lifetime_s
        if pool is not None and lifetime > 0 and time.monotonic() - pool.created > lifetime:
            self.retire(backend)
            pool = None
        if pool is None:
            limits = httpx.Limits(
                max_connections=self._max_connections,
                max_keepalive_connections=self._max_connections,
                keepalive_expiry=lifetime if lifetime > 0 else 5.0,
            )
            client = httpx.AsyncClient(
                timeout=self._timeout, headers=self._headers, limits=limits, transport=self._transport
            )
            pool = backend.pool = Pool(client)
        pool.in_use += 1
        return pool

    def release(self, pool: Pool) -> None:
        pool.in_use -= 1
        if pool in self._retired:
            self._close_idle_retired()

    def retire(self, backend: Backend) -> None:
        """Stop handing out the server's pool (it left the fleet, or its lifetime is over)."""
        if backend.pool is not None:
            self._retired.add(backend.pool)
            backend.pool = None
        self._close_idle_retired()

    def _close_idle_retired(self) -> None:
        for pool in [p for p in self._retired if p.in_use == 0]:
            self._retired.discard(pool)
            task = asyncio.ensure_future(pool.client.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self, backends: list[Backend]) -> None:
        pools = [b.pool for b in backends if b.pool is not None] + list(self._retired)
        for backend in backends:
            backend.pool = None
        self._retired.clear()
        await asyncio.gather(*(pool.client.aclose() for pool in pools))


def choose_backend(
    backends: list[Backend], hashes: list[int], exclude: set[str], turn: int, max_imbalance: int
) -> Backend:
    """The least-loaded server not cooling down (and not yet tried by this request), or the one
    holding the longest prefix of this prompt (`hashes`; empty: no affinity) if it is not busier by
    more than `max_imbalance`; if every server is cooling down, the one that recovers first. `turn`
    breaks ties between equally loaded servers in turn."""
    candidates = [b for b in backends if b.up and b.url not in exclude]
    if not candidates:
        candidates = [b for b in backends if b.url not in exclude] or backends
        return min(candidates, key=lambda b: b.down_until)
    start = turn % len(candidates)
    ordered = candidates[start:] + candidates[:start]
    least = min(ordered, key=lambda b: b.outstanding)
    if hashes:
        matched = {b.url: b.matched_blocks(hashes) for b in ordered}
        best = max(matched.values())
        if best > min(matched.values()):  # one server holds more of this prompt than another
            holder = min((b for b in ordered if matched[b.url] == best), key=lambda b: b.outstanding)
            if holder.outstanding <= least.outstanding + max_imbalance:
                return holder
    return least


async def resolve_addresses(url: str) -> list[str]:
    """The URL once per address its host resolves to (an IP literal: the URL itself)."""
    parsed = httpx.URL(url)
    host = parsed.host
    try:
        ipaddress.ip_address(host)
        return [url]
    except ValueError:
        pass
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = sorted({str(info[4][0]) for info in infos})
    path = parsed.raw_path.decode().rstrip("/")
    return [f"{parsed.scheme}://{f'[{a}]' if ':' in a else a}:{port}{path}" for a in addresses]
