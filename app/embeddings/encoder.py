"""Sentence embeddings for the similarity step (sentence-transformers, in process).

Encoding runs in a worker thread so the event loop keeps serving while a batch is encoded.
Instruction embeddings are cached (LRU, keyed by text): in GRPO the same instruction is scored
once per sampled response, so a group of G responses encodes it once.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict

import numpy as np


class Embedder:
    def __init__(self, model_path: str, device: str = "cpu", cache_size: int = 4096) -> None:
        from sentence_transformers import SentenceTransformer  # heavy import, only when used

        self.model_path = model_path
        self._model = SentenceTransformer(model_path, device=device, local_files_only=True)
        self._lock = threading.RLock()  # one encode at a time; also guards the cache
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self.cache_hits = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        """Normalised embeddings, one row per text."""
        with self._lock:
            return self._model.encode(
                texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
            )

    def encode_cached(self, texts: list[str]) -> np.ndarray:
        """Like encode, but texts seen recently are not encoded again."""
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if missing:
                for text, vector in zip(missing, self.encode(missing)):
                    self._cache[text] = vector
            self.cache_hits += len(texts) - len(missing)
            rows = []
            for text in texts:
                self._cache.move_to_end(text)
                rows.append(self._cache[text])
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return np.stack(rows)

    async def aencode(self, texts: list[str], cached: bool = False) -> np.ndarray:
        fn = self.encode_cached if cached else self.encode
        return await asyncio.to_thread(fn, texts)
