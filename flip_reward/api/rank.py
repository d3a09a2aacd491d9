"""POST /rank: best-of-N. One instruction, N responses, scored in one engine batch."""

from __future__ import annotations

from fastapi import APIRouter, Request

from flip_reward.api.results import to_result
from flip_reward.api.schemas import RankRequest, RankResponse
from flip_reward.api.serving import ERROR_RESPONSES, ScoringRequest, score_items
from flip_reward.scoring.prompts import PROMPT_VERSION

router = APIRouter(tags=["reward"])


def rank_order(rewards: list[float | None]) -> list[int]:
    """Indices best first. Equal rewards keep input order (lowest index first), so the ranking
    is deterministic; responses without a reward come last."""
    scored = sorted(((-r, i) for i, r in enumerate(rewards) if r is not None))
    return [i for _, i in scored] + [i for i, r in enumerate(rewards) if r is None]


@router.post("/rank", response_model=RankResponse, responses=ERROR_RESPONSES)
async def rank(body: RankRequest, request: Request) -> RankResponse:
    """Score N responses to one instruction and rank them (best first)."""
    service, results = await score_items(
        request, ScoringRequest(body.reward_items(), body, route="/rank", field="responses")
    )
    rewards = [r.reward for r in results]
    ranking = rank_order(rewards)
    return RankResponse(
        model=service.model_name,
        similarity=body.similarity or service.settings.similarity,
        prompt_version=PROMPT_VERSION,
        rewards=rewards,
        ranking=ranking,
        best_index=ranking[0] if rewards[ranking[0]] is not None else None,
        results=[to_result(r, body.details) for r in results],
    )
