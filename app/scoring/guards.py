"""Guards against the reward hack every FLIP variant falls for: a response that restates the
instruction. Reconstructing (or scoring) the instruction from a response that contains it is
trivial, so such a response would beat an honest answer.

The guard finds the parts of the instruction that the response copies word for word (runs of at
least `min_words` normalised words) so the scorer can leave them out: what is left of the
instruction must be implied by the response, not pasted into it. An honest answer that quotes
the text it was asked to work on keeps its reward for the task words around the quote.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+", re.UNICODE)


def _words(text: str) -> list[tuple[str, int, int]]:
    """Lower-cased words with their character spans."""
    return [(m.group(0).lower(), m.start(), m.end()) for m in _WORD.finditer(text)]


def copied_spans(instruction: str, response: str, min_words: int = 3) -> list[tuple[int, int]]:
    """Character spans of `instruction` covered by runs of >= min_words words that also occur,
    in the same order, in `response`. Spans are merged and sorted."""
    inst = _words(instruction)
    resp = [w for w, _, _ in _words(response)]
    n = min(min_words, len(inst))
    if n == 0 or len(resp) < n:
        return []
    response_grams = {tuple(resp[i : i + n]) for i in range(len(resp) - n + 1)}
    spans: list[tuple[int, int]] = []
    for i in range(len(inst) - n + 1):
        if tuple(w for w, _, _ in inst[i : i + n]) in response_grams:
            start, end = inst[i][1], inst[i + n - 1][2]
            if spans and start <= spans[-1][1] + 1:
                spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
            else:
                spans.append((start, end))
    return spans


def copied_fraction(instruction: str, spans: list[tuple[int, int]]) -> float:
    """Share of the instruction's word characters inside the copied spans."""
    total = sum(end - start for _, start, end in _words(instruction))
    if total == 0:
        return 0.0
    covered = sum(end - start for _, start, end in _words(instruction) if any(s <= start and end <= e for s, e in spans))
    return covered / total


def token_mask(text: str, offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """For each token of `text` (character offsets): True when it should still be scored.

    A token with letters or digits is dropped when all of them lie inside copied spans. A token of
    only punctuation or white space (".", ":", "\\n\\n") goes with the token before it, so the
    punctuation inside a copied passage is not credited either."""
    keep: list[bool] = []
    for start, end in offsets:
        positions = [i for i in range(start, end) if text[i].isalnum()]
        if not positions:
            keep.append(keep[-1] if keep else True)
            continue
        copied = all(any(s <= i < e for s, e in spans) for i in positions)
        keep.append(not copied)
    return keep


# Keyword stuffing: the instruction's words without its word order. Measured on Self-Instruct and
# Auto-J (2026-11-29): stuffed responses take 100% of their words from the instruction and read at
# -4.4 to -9 nats per token to the model; honest answers that reuse the instruction's words (rewrites
# of a given passage) are fluent, and the median honest answer takes 24-31% of its words from it.
STUFFING_WORD_SHARE = 0.8
STUFFING_FLUENCY = -4.0


def instruction_word_share(instruction: str, response: str) -> float:
    """Share of the response's words that also occur in the instruction."""
    vocabulary = {w for w, _, _ in _words(instruction)}
    words = [w for w, _, _ in _words(response)]
    return sum(w in vocabulary for w in words) / len(words) if words else 0.0


def is_keyword_stuffing(instruction: str, response: str, fluency: float | None) -> bool:
    """The response is (nearly) only instruction words, in an order the model finds implausible."""
    if fluency is None or fluency >= STUFFING_FLUENCY:
        return False
    return instruction_word_share(instruction, response) >= STUFFING_WORD_SHARE
