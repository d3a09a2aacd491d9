"""POST /reward and POST /batch_reward: validate, hand the items to the scorer, shape the answer."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app import metrics
from app.api.errors import ApiError
from app.api.limits import check_item_limits
from app.api.schemas import (
    BatchRewardRequest,
    BatchRewardResponse,
    ErrorResponse,
    RewardItem,
    RewardRequest,
    RewardResponse,
    RewardResult,
    ScoringOptions,
    Similarities,
    Usage,
)
from app.scoring.prompts import PROMPT_VERSION
from app.scoring.scorer import ItemResult, ScoreItem, ScoreOptions
from app.service import FlipService

router = APIRouter(tags=["reward"])

# Documented so that the OpenAPI document (and the fuzz tests that read it) knows every answer.
ERROR_RESPONSES = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in (
        (400, "The body is not readable JSON text (e.g. not UTF-8)."),
        (408, "The body took too long to arrive."),
        (413, "Over a limit: body bytes, items, characters per field or messages; the message names it."),
        (422, "Invalid input; `field` names the offending field."),
        (503, "The models are loading, or the engine failed (see Retry-After)."),
    )
}


def ready_service(request: Request) -> FlipService:
    service: FlipService = request.app.state.service
    if not service.ready:
        raise ApiError(503, "not_ready", service.not_ready_reason(), headers={"Retry-After": "5"})
    return service


def _to_item(item: RewardItem) -> ScoreItem:
    return ScoreItem(instruction=item.instruction, response=item.response, context=item.context, id=item.id)


def _to_result(result: ItemResult, details: bool) -> RewardResult:
    return RewardResult(
        id=result.id,
        reward=result.reward,
        inferred_instruction=result.inferred_instruction,
        similarities=Similarities(**result.similarities) if result.similarities else None,
        parsed=result.parsed,
        truncated=result.truncated,
        usage=Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens),
        error=result.error,
        raw_output=result.raw_output if details else None,
    )


async def _score(service: FlipService, items: list[RewardItem], options: ScoringOptions) -> list[ItemResult]:
    metrics.ITEMS_PER_REQUEST.observe(len(items))
    score_options = ScoreOptions(
        similarity=options.similarity or service.settings.similarity,
        prompt_mode=service.settings.prompt_mode,
    )
    return await service.scorer.score([_to_item(i) for i in items], score_options)


@router.post("/reward", response_model=RewardResponse, response_model_exclude_none=False, responses=ERROR_RESPONSES)
async def reward(body: RewardRequest, request: Request) -> RewardResponse:
    """Score one response against its instruction."""
    service = ready_service(request)
    check_item_limits([body], service.settings, batch=False)
    (result,) = await _score(service, [body], body)
    return RewardResponse(
        **_to_result(result, body.details).model_dump(),
        model=service.engine.model_name,
        similarity=body.similarity or service.settings.similarity,
        prompt_version=PROMPT_VERSION,
    )


@router.post("/batch_reward", response_model=BatchRewardResponse, responses=ERROR_RESPONSES)
async def batch_reward(body: BatchRewardRequest, request: Request) -> BatchRewardResponse:
    """Score many items in one engine batch. Results keep the input order; an item that could
    not be scored has `reward: null` and an `error`, never a made-up 0."""
    service = ready_service(request)
    limit = service.settings.max_batch_items
    if len(body.items) > limit:
        message = f"items: {len(body.items)} items, the limit is {limit} (FLIP_MAX_BATCH_ITEMS)"
        raise ApiError(413, "too_many_items", message, "items")
    check_item_limits(body.items, service.settings, batch=True)
    results = await _score(service, body.items, body)
    return BatchRewardResponse(
        model=service.engine.model_name,
        similarity=body.similarity or service.settings.similarity,
        prompt_version=PROMPT_VERSION,
        rewards=[r.reward for r in results],
        results=[_to_result(r, body.details) for r in results],
    )
