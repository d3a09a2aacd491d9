"""Prompts rendered to token ids with the engine's tokenizer and fitted into its context.

Pure and synchronous: a tokenizer and the context length are all it needs (no engine), so a
benchmark prepares exactly the prompts the service sends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flip_reward.scoring.items import ScoreItem
from flip_reward.scoring.outcomes import ItemErrorCode
from flip_reward.scoring.parse import strip_think
from flip_reward.scoring.prompts import Prompt

# Tokens kept free between the prompt and the context limit: decoding a cut response and
# encoding it again can change the token count by a few.
_FIT_MARGIN = 8


@dataclass
class Fitted:
    """A prompt rendered to token ids that fits the context, or the reason it could not."""

    token_ids: list[int] = field(default_factory=list)
    answer_prefix: str = ""
    response: str = ""
    context: list[dict[str, str]] = field(default_factory=list)
    truncated: bool = False
    error: str | None = None
    code: ItemErrorCode | None = None  # set with `error`
    stop: tuple[str, ...] = ()
    text: str = ""  # the rendered prompt, and each token's character span in it
    offsets: list[tuple[int, int]] = field(default_factory=list)


class PromptFitter:
    def __init__(self, tokenizer: Any, max_model_len: int, strip_think: bool = True) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.strip_think = strip_think
        # A fast HF tokenizer's Rust backend: the same ids and spans without the wrapper's conversions.
        self._backend = getattr(tokenizer, "backend_tokenizer", None)

    def encode(self, text: str) -> list[int]:
        """`text`'s token ids, no special tokens. A fast HF tokenizer's own `encode` goes through its
        batch path (a thread pool handoff) and cost a short instruction as much as a whole prompt;
        its Rust backend gives the same ids directly (tests/unit/scoring/test_fitting.py)."""
        if self._backend is not None:
            return self._backend.encode(text, add_special_tokens=False).ids
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def render(self, prompt: Prompt) -> list[int]:
        return self.render_with_offsets(prompt, offsets=False)[0]

    def render_with_offsets(self, prompt: Prompt, offsets: bool = True) -> tuple[list[int], str, list[tuple[int, int]]]:
        """Ids, text and each token's character span (offsets=False: no spans, a Python tuple per
        token the caller would not read)."""
        text = self.tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
        text += prompt.answer_prefix
        if self._backend is not None:
            encoding = self._backend.encode(text, add_special_tokens=False)
            return encoding.ids, text, encoding.offsets if offsets else []
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoded["input_ids"]), text, [tuple(o) for o in encoded["offset_mapping"]]

    def clean(self, response: str) -> str:
        return strip_think(response) if self.strip_think else response.strip()

    def fit(
        self,
        build: Callable[[str, list[dict[str, str]]], Prompt],
        item: ScoreItem,
        budget: int,
        offsets: bool = False,
    ) -> Fitted:
        """Render build(response, context) within `budget` tokens: drop the oldest context turns
        first, then cut the tail of the response (its opening says most about what was asked).
        offsets=True: with each token's character span (Fitted.offsets)."""
        response = self.clean(item.response)
        if not response:
            return Fitted(error="response is empty after removing <think> blocks", code="no_output")
        context = list(item.context)
        truncated = False
        while True:
            prompt = build(response, context)
            ids, text, spans = self.render_with_offsets(prompt, offsets)
            if len(ids) <= budget:
                return Fitted(
                    ids,
                    prompt.answer_prefix,
                    response,
                    context,
                    truncated,
                    stop=prompt.stop,
                    text=text,
                    offsets=spans,
                )
            truncated = True
            if context:
                context.pop(0)
                continue
            response_ids = self.encode(response)
            keep = len(response_ids) - (len(ids) - budget) - _FIT_MARGIN
            if keep <= 0:
                return Fitted(
                    error="the prompt does not fit the model's context even without the response",
                    code="context_overflow",
                )
            response = self.tokenizer.decode(response_ids[:keep])
