"""The engine contract (tests/engine_contract.py) on the real engines: vLLM in this process, and
the remote engine against two real `vllm serve` processes."""

from __future__ import annotations

import asyncio

import pytest

from app.config import Settings
from tests.engine_contract import check_engine_contract

pytestmark = pytest.mark.integration


async def test_in_process_vllm_engine_keeps_the_contract(tmp_path):
    from app.service import load_vllm_engine

    engine = await asyncio.to_thread(load_vllm_engine, Settings(max_num_seqs=8, cpu_kv_cache_gib=1))
    try:
        await check_engine_contract(engine)
    finally:
        await engine.shutdown()


async def test_remote_engine_keeps_the_contract(fleet):
    from app.engines.openai_remote import RemoteEngine

    settings = Settings(engine="remote", remote_urls=fleet.urls, remote_api_key=fleet.api_key, remote_wait_s=0)
    engine = await asyncio.to_thread(RemoteEngine.start, settings)
    assert engine.prompt_logprobs_endpoint == "generate"  # the fleet offers cache reads
    try:
        await check_engine_contract(engine)
    finally:
        await engine.shutdown()
