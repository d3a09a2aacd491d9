"""A short soak against the shared real server (the full one is bench/soak.py): concurrent
clients, every request id answered exactly once, no 5xx, memory growth over the run's second half bounded."""

from __future__ import annotations

import json

import pytest

from bench.soak import run_soak

pytestmark = pytest.mark.integration


async def test_short_soak(server):
    # The memory check is on the second half of the run: the API process first steps up 100-150 MiB
    # above its post-warm-up size (allocator and tensor caches for new shapes) and then stays flat
    # within a few MiB, while a leak keeps climbing. 24 late requests catch a gross leak only;
    # bench/soak.py's 400 requests catch smaller ones.
    result = await run_soak(
        server.url, server.process.pid, clients=8, requests=48, warmup=24, max_seconds=420, max_late_rss_growth_mib=32
    )
    print("\nsoak:", json.dumps(result))
    assert result["answered_exactly_once"], result
    assert result["requests_answered"] == result["requests_sent"] == 48
    assert result["server_errors"] == 0 and not result["transport_errors"] and not result["unexpected_statuses"]
    assert result["null_rewards_on_200"] == 0
    assert result["latency_p99_s"] is not None
    assert result["rss_late_growth_mib"] <= 32, result
    assert result["passed"]
