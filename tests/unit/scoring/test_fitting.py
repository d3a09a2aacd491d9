"""PromptFitter reads the built-in model's fast tokenizer through its Rust backend (fitting.py:
`encode`, `render_with_offsets`): the ids and character spans must be the ones the transformers
wrapper gives, on real eval texts, or every prompt and every scored instruction would shift."""

from __future__ import annotations

import pytest

from bench.throughput import load_pairs
from flip_reward.config import Settings
from flip_reward.models import TRANSFORMERS_LOCK, resolve_llm
from flip_reward.scoring.fitting import PromptFitter
from flip_reward.scoring.prompts import build_likelihood_prompt


@pytest.fixture(scope="module")
def tokenizer():
    with TRANSFORMERS_LOCK:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(resolve_llm(None, Settings().cache_dir))


@pytest.fixture(scope="module")
def pairs() -> list[dict]:
    return load_pairs()[:200]


def test_encode_gives_the_wrappers_ids(tokenizer, pairs):
    fitter = PromptFitter(tokenizer, 2048)
    assert fitter.tokenizer.backend_tokenizer is not None  # the fast path is the one under test
    texts = [p["prompt"].strip() for p in pairs] + [p["response"] for p in pairs] + ["", " ", "héllo <|im_end|> 😀"]
    for text in texts:
        assert fitter.encode(text) == tokenizer.encode(text, add_special_tokens=False), text[:80]


def test_render_with_offsets_gives_the_wrappers_ids_and_spans(tokenizer, pairs):
    fitter = PromptFitter(tokenizer, 2048)
    for pair in pairs:
        prompt = build_likelihood_prompt(pair["response"], [])
        ids, text, offsets = fitter.render_with_offsets(prompt)
        wrapped = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        assert ids == list(wrapped["input_ids"])
        assert offsets == [tuple(o) for o in wrapped["offset_mapping"]]
