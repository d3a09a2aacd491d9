"""What the scorer takes in and gives back, one item at a time; shared by every scoring method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from flip_reward.config import Method, PromptMode, Similarity
from flip_reward.scoring.outcomes import ItemErrorCode, UnscorableReason


@dataclass(frozen=True)
class ScoreItem:
    instruction: str
    response: str
    context: tuple[dict[str, str], ...] = ()
    id: str | None = None


@dataclass(frozen=True)
class ScoreOptions:
    similarity: Similarity
    prompt_mode: PromptMode
    method: Method = "likelihood"  # the server's default (Settings.method)
    copy_guard: bool = True
    # likelihood: unrelated instructions to contrast with; None: Settings.likelihood_distractors
    distractors: int | None = None


class LikelihoodDetails(TypedDict, total=False):
    """The numbers behind a likelihood reward (flip_reward/scoring/methods/likelihood.py; the API's
    `Likelihood` documents each): mean instruction logprob after the response and after none, their
    difference (PMI), the same for the distractors, the contrast, how many tokens were scored; the
    response's own fluency (read for stuffing candidates only) and the keyword-stuffing guard."""

    conditional: float
    unconditional: float | None
    pmi: float
    scored_tokens: int
    distractor_score: float
    contrast: float
    response_fluency: float | None
    keyword_stuffing: bool
    reward_without_guard: float


@dataclass
class ItemResult:
    id: str | None
    method: Method = "likelihood"
    reward: float | None = None
    inferred_instruction: str | None = None
    similarities: dict[str, float] | None = None
    likelihood: LikelihoodDetails | None = None
    judge_score: int | None = None
    copied_fraction: float | None = None
    parsed: bool | None = None
    truncated: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    raw_output: str | None = None
    error: str | None = None
    code: ItemErrorCode | None = None  # set with `error`
    unscorable: UnscorableReason | None = None  # set with the floor reward
