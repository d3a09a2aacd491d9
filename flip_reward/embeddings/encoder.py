"""Sentence embeddings for the similarity step (sentence-transformers, in process).

Encoding runs in a worker thread so the event loop keeps serving while a batch is encoded.
Concurrent requests are encoded together: a micro-batcher (flip_reward/batching.py) gathers the texts
of every request that arrives within a few milliseconds into one model call.
Instruction embeddings are cached (LRU, keyed by model and text): in GRPO the same instruction is
scored once per sampled response, so a group of G responses encodes it once, even when the G
requests arrive at the same moment (the first one encodes, the others wait for it).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from flip_reward import metrics
from flip_reward.batching import MicroBatcher


class EmbeddingEncoder(Protocol):
    """What the similarity step uses: an Embedder, one loaded on demand (flip_reward/embeddings/on_demand.py)
    or the unit tests' HashEmbedder."""

    async def aencode(self, texts: list[str], cached: bool = False) -> np.ndarray: ...


class Embedder:
    def __init__(
        self,
        model_path: str,
        device: str = "cpu",
        cache_size: int = 4096,
        max_batch_size: int = 64,
        max_wait_ms: float = 5.0,
        model_name: str | None = None,
    ) -> None:
        from sentence_transformers import SentenceTransformer  # heavy import, only when used

        self.model_path = model_path
        self.model_name = model_name or model_path
        # On `cuda` the model runs in float32 as on the CPU (sentence-transformers keeps the saved
        # dtype): the same normalised vectors up to float rounding, the same numpy output.
        self._model = SentenceTransformer(model_path, device=device, local_files_only=True)
        self._lock = threading.Lock()  # one encode at a time (the CLI may call encode directly)
        self._max_batch_size = max_batch_size
        self._batcher: MicroBatcher[str, np.ndarray] = MicroBatcher(
            self._encode_in_thread, max_batch_size, max_wait_ms / 1000, on_batch=metrics.EMBEDDING_BATCH_SIZE.observe
        )
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._pending: dict[tuple[str, str], tuple[asyncio.Future, int]] = {}  # being encoded now: (task, row)
        self.cache_size = cache_size
        self.cache_hits = 0
        self.cache_misses = 0

    # Texts per forward pass inside one encode call. sentence-transformers sorts a call's texts by
    # length and pads each chunk to its longest: chunks of 64 mixed instructions (what 64 concurrent
    # singles bring) padded short texts to long ones, 2.3x the time of chunks of 16 on the CPU.
    ENCODE_CHUNK = 16
    # A forward pass only takes texts whose lengths differ by at most this factor (characters, from
    # a floor of 16): a micro-batch of 8 or 16 mixed eval instructions, all padded to the longest,
    # took 2-2.6x the CPU per text of length-bucketed passes (bench/embedding_chunks.py).
    LENGTH_RATIO = 2.0

    def encode(self, texts: list[str]) -> np.ndarray:
        """Normalised embeddings, one row per text, in the order given."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with self._lock:
            parts = [
                self._model.encode(
                    [texts[order[i]] for i in bucket],
                    batch_size=min(self._max_batch_size, self.ENCODE_CHUNK),
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
                for bucket in _length_buckets([len(texts[i]) for i in order], self.LENGTH_RATIO)
            ]
        stacked = np.concatenate(parts)
        out = np.empty_like(stacked)
        out[order] = stacked
        return out

    async def _encode_in_thread(self, texts: list[str]) -> Sequence[np.ndarray]:
        return await asyncio.to_thread(self.encode, texts)  # type: ignore[arg-type]  # an array is a sequence of rows

    async def aencode(self, texts: list[str], cached: bool = False) -> np.ndarray:
        """Embeddings of `texts`, encoded together with other concurrent callers' texts.
        With cached=True, texts seen recently are taken from the LRU cache."""
        if not cached or self.cache_size == 0:
            return np.stack(await self._batcher.submit(texts))
        keys = [(self.model_name, text) for text in texts]
        found: dict[tuple[str, str], np.ndarray] = {}
        encoding: dict[tuple[str, str], tuple[asyncio.Future, int]] = {}  # key -> (task, row)
        missing: list[tuple[str, str]] = []
        for key in dict.fromkeys(keys):
            if key in self._cache:
                self._cache.move_to_end(key)
                found[key] = self._cache[key]
            elif key in self._pending:  # another request is encoding it right now
                encoding[key] = self._pending[key]
            else:
                missing.append(key)
        hits = len(keys) - len(missing)
        self.cache_hits += hits
        self.cache_misses += len(missing)
        metrics.EMBEDDING_CACHE_HITS.inc(hits)
        metrics.EMBEDDING_CACHE_MISSES.inc(len(missing))
        if missing:
            # A task of its own: a caller that is cancelled (client gone) must not take the
            # encoding away from the concurrent callers waiting for the same texts.
            task: asyncio.Future = asyncio.ensure_future(  # noqa: RUF006  (kept in self._pending below)
                self._batcher.submit([text for _, text in missing])
            )
            task.add_done_callback(functools.partial(self._store, missing))
            for index, key in enumerate(missing):
                self._pending[key] = encoding[key] = (task, index)
        for key, (pending, index) in encoding.items():
            found[key] = (await asyncio.shield(pending))[index]
        return np.stack([found[key] for key in keys])

    def _store(self, keys: list[tuple[str, str]], task: asyncio.Future) -> None:
        for key in keys:
            self._pending.pop(key, None)
        if task.cancelled() or task.exception() is not None:
            return
        for key, vector in zip(keys, task.result()):
            self._cache[key] = vector
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def cache_info(self) -> dict[str, int]:
        return {
            "size": len(self._cache),
            "max_size": self.cache_size,
            "hits": self.cache_hits,
            "misses": self.cache_misses,
        }

    async def close(self) -> None:
        await self._batcher.close()


def _length_buckets(sorted_lengths: list[int], ratio: float) -> list[range]:
    """Runs of positions in `sorted_lengths` (ascending) whose longest is at most `ratio` times the
    shortest (16 characters at least): what one forward pass may pad together."""
    buckets: list[range] = []
    start = 0
    for end, length in enumerate(sorted_lengths):
        if length > ratio * max(sorted_lengths[start], 16):
            buckets.append(range(start, end))
            start = end
    if sorted_lengths:
        buckets.append(range(start, len(sorted_lengths)))
    return buckets
