"""Similarity between the inferred and the real instruction, each in [0, 1]."""

from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalise_words(text: str) -> list[str]:
    """The paper's normalisation (as in SQuAD): lowercase, drop punctuation and the articles
    a/an/the, split on whitespace."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return text.split()


def word_f1(prediction: str, reference: str) -> float:
    """Word-level F1 over the multisets of normalised words; 0 when nothing overlaps."""
    pred, ref = normalise_words(prediction), normalise_words(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def paired_cosine_01(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of row i of `a` with row i of `b`, clipped to [0, 1]: an inferred
    instruction pointing away from the real one is simply not similar."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    cosines = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    return np.clip(cosines, 0.0, 1.0)


def hybrid(f1: float, embedding: float, embedding_weight: float) -> float:
    """Weighted mean: `embedding_weight` on the cosine, the rest on F1."""
    return embedding_weight * embedding + (1.0 - embedding_weight) * f1
