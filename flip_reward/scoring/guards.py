"""Guards against the reward hacks every FLIP variant falls for.

Restating: a response that contains the instruction makes inferring (or scoring) the instruction
trivial, so it would beat an honest answer. The copy guard deletes from the response every passage
it copies from the instruction before scoring: the instruction must be implied by what the response
adds, not pasted into it. A passage is a run of at least `min_words` words in the instruction's
order, or of `min_words` content words (stop words skipped on both sides), so dropping or swapping
the small words ("write email friends inviting dinner") does not hide a copy. Every instruction
token is still scored, so two responses to one instruction stay on the same scale (an earlier
version left the copied instruction tokens out of the score instead; measured on Auto-J, that
penalised answers that quote their task and dropped pairwise accuracy from 0.55 to 0.40).

Keyword stuffing: the instruction's words without its word order; see is_keyword_stuffing.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+", re.UNICODE)

# English function words, skipped when matching runs of content words: dropping or swapping them does
# not hide a copy. Written for this project (no dependency for one list); lower case, as _words yields.
STOP_WORDS = frozenset(
    """
    a about above across after afterwards again against all almost alone along already also although
    always am among amongst an and another any anyhow anyone anything anyway anywhere are around as
    at back be because been before behind being below beside besides between beyond both but by can
    cannot could did do does doing down during each either else enough etc even ever every everyone
    everything everywhere except few for from further had has have having he hence her here hers
    herself him himself his how however i if in indeed into is it its itself least less many may me
    meanwhile might mine more moreover most mostly much must my myself namely neither never
    nevertheless next no nobody none nor not nothing now nowhere of off often on once only onto or
    other others otherwise our ours ourselves out over own per perhaps please rather re same several
    shall she should since so some somehow someone something sometime sometimes somewhere still such
    than that the their theirs them themselves then there therefore these they this those though
    through throughout thus to together too toward towards under until up upon us very via was we
    well were what whatever when whenever where whereas wherever whether which while who whoever
    whole whom whose why will with within without would yet you your yours yourself yourselves
    """.split()
)


def _words(text: str) -> list[tuple[str, int, int]]:
    """Lower-cased words with their character spans."""
    return [(m.group(0).lower(), m.start(), m.end()) for m in _WORD.finditer(text)]


def _content(words: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    return [w for w in words if w[0] not in STOP_WORDS]


def _runs(inst: list[tuple[str, int, int]], resp: list[tuple[str, int, int]], n: int) -> list[tuple[int, int]]:
    """Character spans of the n-word windows of `resp` that also occur in `inst`."""
    n = min(n, len(inst))
    if n == 0 or len(resp) < n:
        return []
    # n-grams by zipping shifted word lists: a tuple per window built in C, not in a generator
    # (this was a top cost of a reward in the front-ceiling profile, for long instructions)
    inst_words, resp_words = [w for w, _, _ in inst], [w for w, _, _ in resp]
    grams = set(zip(*(inst_words[k:] for k in range(n))))
    return [
        (resp[i][1], resp[i + n - 1][2])
        for i, gram in enumerate(zip(*(resp_words[k:] for k in range(n))))
        if gram in grams
    ]


def copied_spans(instruction: str, response: str, min_words: int = 3) -> list[tuple[int, int]]:
    """Character spans of `response` covered by runs of >= min_words words, or of >= min_words
    content words (stop words skipped on both sides), that also occur in the same order in
    `instruction`. Spans are merged and sorted."""
    inst, resp = _words(instruction), _words(response)
    found = sorted(_runs(inst, resp, min_words) + _runs(_content(inst), _content(resp), min_words))
    spans: list[tuple[int, int]] = []
    for start, end in found:
        if spans and start <= spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    return spans


def remove_copied(instruction: str, response: str, min_words: int = 3) -> tuple[str, float]:
    """The response without the passages it copies from the instruction, and the share of its
    word characters those passages held. Each removed passage leaves one space behind."""
    spans = copied_spans(instruction, response, min_words)
    if not spans:
        return response, 0.0
    total = sum(end - start for _, start, end in _words(response))
    covered = sum(end - start for _, start, end in _words(response) if any(s <= start and end <= e for s, e in spans))
    pieces, at = [], 0
    for start, end in spans:
        pieces.append(response[at:start])
        at = end
    pieces.append(response[at:])
    kept = re.sub(r"[ \t]{2,}", " ", " ".join(p.strip(" \t") for p in pieces)).strip()
    return kept, covered / total if total else 0.0


# Keyword stuffing: the instruction's words without its word order. Measured on Self-Instruct and
# Auto-J (2026-11-29): stuffed responses take 100% of their words from the instruction and read at
# -4.4 to -9 nats per token to the model; honest answers that reuse the instruction's words (rewrites
# of a given passage) are fluent, and the median honest answer takes 24-31% of its words from it.
# Short honest answers picked out of the instruction ("Confident" from a list of tones, a formula
# built from the cells it names) match both; the stuffed probes have 37-40 words, the honest
# answers caught without a floor 1-12.
STUFFING_WORD_SHARE = 0.8
STUFFING_FLUENCY = -4.0
STUFFING_MIN_WORDS = 16


def instruction_word_share(instruction: str, response: str) -> float:
    """Share of the response's words that also occur in the instruction."""
    vocabulary = {w for w, _, _ in _words(instruction)}
    words = [w for w, _, _ in _words(response)]
    return sum(w in vocabulary for w in words) / len(words) if words else 0.0


def is_stuffing_candidate(instruction: str, response: str) -> bool:
    """The text half of the test: long enough and (nearly) only instruction words. Only such a
    response needs its fluency, which costs logprobs over all of its tokens."""
    return (
        len(_words(response)) >= STUFFING_MIN_WORDS
        and instruction_word_share(instruction, response) >= STUFFING_WORD_SHARE
    )


def is_keyword_stuffing(instruction: str, response: str, fluency: float | None) -> bool:
    """The response is (nearly) only instruction words, in an order the model finds implausible."""
    if fluency is None or fluency >= STUFFING_FLUENCY:
        return False
    return is_stuffing_candidate(instruction, response)
