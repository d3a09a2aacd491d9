"""POST /reward and POST /batch_reward: validate, hand the items to the serving path, shape the answer.

The split these routes keep explicit: a response with nothing to score (empty, only <think>, only
copies of the instruction) gets the floor reward (FLIP_UNSCORABLE_REWARD) with `unscorable` naming
why; an item the service failed on gets `reward: null` with `error` and `code` (these routes report
per-item failures; the trainer routes turn them into an HTTP error); a failure of the whole request
(engine down, deadline, overload) is a 503/504/429 with Retry-After, never a made-up number.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from flip_reward.api.json_route import JsonBodyRoute
from flip_reward.api.results import to_result
from flip_reward.api.schemas import (
    BatchRewardRequest,
    BatchRewardResponse,
    RewardRequest,
    RewardResponse,
)
from flip_reward.api.serving import ERROR_RESPONSES, ScoringRequest, ready_service, score_items
from flip_reward.scoring.prompts import PROMPT_VERSION

__all__ = ["ERROR_RESPONSES", "json_response", "ready_service", "router"]

router = APIRouter(tags=["reward"], route_class=JsonBodyRoute)


def json_response(model: BaseModel) -> Response:
    """The model as JSON, written by pydantic in one pass. Returned as a Response, FastAPI neither
    validates it against the response model again nor encodes it twice (a per-request cost that
    showed in the front-ceiling profile); the response model still documents it in OpenAPI."""
    return Response(model.model_dump_json(), media_type="application/json")


@router.post("/reward", response_model=RewardResponse, response_model_exclude_none=False, responses=ERROR_RESPONSES)
async def reward(body: RewardRequest, request: Request) -> Response:
    """Score one response against its instruction."""
    service, (result,) = await score_items(request, ScoringRequest([body], body, route="/reward", field="body"))
    return json_response(
        to_result(
            result,
            body.details,
            RewardResponse,
            model=service.model_name,
            similarity=body.similarity or service.settings.similarity,
            prompt_version=PROMPT_VERSION,
        )
    )


@router.post("/batch_reward", response_model=BatchRewardResponse, responses=ERROR_RESPONSES)
async def batch_reward(body: BatchRewardRequest, request: Request) -> Response:
    """Score many items in one engine batch. Results keep the input order. A response with nothing
    to score gets the floor reward and its `unscorable` reason; an item that could not be scored
    has `reward: null`, an `error` and its `code`, never a made-up 0."""
    service, results = await score_items(
        request, ScoringRequest(body.items, body, route="/batch_reward", field="items")
    )
    return json_response(
        BatchRewardResponse(
            model=service.model_name,
            method=body.method or service.settings.method,
            similarity=body.similarity or service.settings.similarity,
            prompt_version=PROMPT_VERSION,
            rewards=[r.reward for r in results],
            results=[to_result(r, body.details) for r in results],
        )
    )
