"""POST /rank: best-of-N. One instruction, N responses, scored in one engine batch."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.errors import ApiError
from app.api.reward import ERROR_RESPONSES, _score, _to_result, ready_service
from app.api.schemas import RankRequest, RankResponse
from app.scoring.prompts import PROMPT_VERSION

router = APIRouter(tags=["reward"])


def rank_order(rewards: list[float | None]) -> list[int]:
    """Indices best first. Equal rewards keep input order (lowest index first), so the ranking
    is deterministic; responses without a reward come last."""
    scored = sorted((i for i, r in enumerate(rewards) if r is not None), key=lambda i: (-rewards[i], i))
    return scored + [i for i, r in enumerate(rewards) if r is None]


@router.post("/rank", response_model=RankResponse, responses=ERROR_RESPONSES)
async def rank(body: RankRequest, request: Request) -> RankResponse:
    """Score N responses to one instruction and rank them (best first)."""
    service = ready_service(request)
    limit = service.settings.max_batch_items
    if len(body.responses) > limit:
        raise ApiError(413, "too_many_items", f"responses: {len(body.responses)} responses, the limit is {limit}",
                       "responses")
    results = await _score(service, body.reward_items(), body, request)
    rewards = [r.reward for r in results]
    ranking = rank_order(rewards)
    return RankResponse(
        model=service.engine.model_name,
        similarity=body.similarity or service.settings.similarity,
        prompt_version=PROMPT_VERSION,
        rewards=rewards,
        ranking=ranking,
        best_index=ranking[0] if rewards[ranking[0]] is not None else None,
        results=[_to_result(r, body.details) for r in results],
    )
