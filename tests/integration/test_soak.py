"""A short soak against the shared real server (the full one is bench/soak.py): concurrent
clients, every request id answered exactly once, no 5xx, memory growth after warm-up bounded."""

from __future__ import annotations

import json

import pytest

from bench.soak import run_soak

pytestmark = pytest.mark.integration


async def test_short_soak(server):
    # The bound: the API process settles about 100 MiB above its post-warm-up size (allocator and
    # tensor caches for new shapes; bench/soak.py's RSS timeline levels off), a leak keeps climbing.
    result = await run_soak(server.url, server.process.pid, clients=8, requests=48, warmup=24, max_seconds=420,
                            max_rss_growth_mib=128)
    print("\nsoak:", json.dumps(result))
    assert result["answered_exactly_once"], result
    assert result["requests_answered"] == result["requests_sent"] == 48
    assert result["server_errors"] == 0 and not result["transport_errors"] and not result["unexpected_statuses"]
    assert result["null_rewards_on_200"] == 0
    assert result["latency_p99_s"] is not None
    assert result["rss_growth_mib"] <= 128, result
    assert result["passed"]
