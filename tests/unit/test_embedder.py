"""The embedder's micro-batching and instruction cache, with the real (small, packaged) MiniLM."""

import asyncio

import numpy as np
import pytest

from flip_reward.embeddings.encoder import Embedder
from flip_reward.models import resolve_embedding_model


@pytest.fixture(scope="module")
def model_path():
    return resolve_embedding_model(None)


async def test_grpo_group_encodes_its_instruction_once(model_path):
    embedder = Embedder(model_path, cache_size=8, max_batch_size=64, max_wait_ms=20, model_name="minilm")
    calls = []
    encode = embedder.encode
    embedder.encode = lambda texts: calls.append(list(texts)) or encode(texts)
    instruction = "Write a haiku about autumn leaves."
    # Eight concurrent single requests of one GRPO group.
    rows = await asyncio.gather(*(embedder.aencode([instruction], cached=True) for _ in range(8)))
    assert calls == [[instruction]]
    assert embedder.cache_info()["misses"] == 1 and embedder.cache_info()["hits"] == 7
    assert all(np.allclose(r, rows[0]) for r in rows)
    again = await embedder.aencode([instruction], cached=True)
    assert len(calls) == 1 and np.allclose(again, rows[0])
    await embedder.close()


async def test_concurrent_requests_are_encoded_in_one_call_and_match_one_by_one(model_path):
    embedder = Embedder(model_path, cache_size=0, max_batch_size=64, max_wait_ms=20)
    calls = []
    encode = embedder.encode
    embedder.encode = lambda texts: calls.append(len(texts)) or encode(texts)
    texts = [f"Summarise paragraph number {i}." for i in range(12)]
    together = await asyncio.gather(*(embedder.aencode([t]) for t in texts))
    assert calls == [12]
    alone = encode(texts)
    assert np.allclose(np.concatenate(together), alone, atol=1e-5)
    await embedder.close()


async def test_cache_is_bounded_lru(model_path):
    embedder = Embedder(model_path, cache_size=2, max_wait_ms=0)
    for text in ("a", "b", "a", "c"):  # "b" is the least recently used when "c" arrives
        await embedder.aencode([text], cached=True)
    assert embedder.cache_info()["size"] == 2
    misses = embedder.cache_info()["misses"]
    await embedder.aencode(["a", "c"], cached=True)
    assert embedder.cache_info()["misses"] == misses
    await embedder.aencode(["b"], cached=True)
    assert embedder.cache_info()["misses"] == misses + 1
    await embedder.close()


def test_length_buckets_keep_each_pass_within_the_ratio():
    from flip_reward.embeddings.encoder import _length_buckets

    lengths = [3, 10, 16, 30, 33, 64, 65, 200, 390, 401]
    buckets = _length_buckets(lengths, 2.0)
    assert [i for b in buckets for i in b] == list(range(len(lengths)))  # every text, once, in order
    for b in buckets:
        assert lengths[b[-1]] <= 2.0 * max(lengths[b[0]], 16)
    assert [list(b) for b in buckets] == [[0, 1, 2, 3], [4, 5, 6], [7, 8], [9]]
    assert _length_buckets([], 2.0) == []


def test_bucketed_encoding_keeps_the_order_and_the_vectors(model_path):
    embedder = Embedder(model_path, cache_size=0)
    texts = ["Hi.", "Write a sonnet about the sea and the sailors who never came home. " * 6, "Sum 2 and 2.", "x" * 40]
    bucketed = embedder.encode(texts)
    embedder.LENGTH_RATIO = float("inf")  # one pass, padded by count only
    assert np.allclose(bucketed, embedder.encode(texts), atol=1e-5)
    assert np.allclose(bucketed, np.stack([embedder.encode([t])[0] for t in texts]), atol=1e-5)
