"""A short soak against the shared real server (the full one is bench/soak.py): concurrent
clients, every request id answered exactly once, no 5xx, memory growth after warm-up bounded."""

from __future__ import annotations

import json

import pytest

from bench.soak import run_soak

pytestmark = pytest.mark.integration


async def test_short_soak(server):
    result = await run_soak(server.url, server.process.pid, clients=8, requests=48, warmup=16, max_seconds=420,
                            max_rss_growth_mib=64)
    print("\nsoak:", json.dumps(result))
    assert result["answered_exactly_once"], result
    assert result["requests_answered"] == result["requests_sent"] == 48
    assert result["server_errors"] == 0 and not result["transport_errors"] and not result["unexpected_statuses"]
    assert result["null_rewards_on_200"] == 0
    assert result["latency_p99_s"] is not None
    assert result["rss_growth_mib"] <= 64, result
    assert result["passed"]
