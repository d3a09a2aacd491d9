"""POST /reward and POST /batch_reward: validate, hand the items to the scorer, shape the answer."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from app import metrics
from app.api.disconnect import ClientDisconnected, cancel_on_disconnect
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
    Likelihood,
    Similarities,
    Usage,
)
from app.scoring.prompts import PROMPT_VERSION
from app.batching import QueueFull
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
        (429, "The queue cannot take this work within its deadline (see Retry-After)."),
        (503, "The models are loading, or the engine failed (see Retry-After)."),
        (504, "Not scored within the deadline; the work was aborted."),
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
        method=result.method,
        reward=result.reward,
        inferred_instruction=result.inferred_instruction,
        similarities=Similarities(**result.similarities) if result.similarities else None,
        likelihood=Likelihood(**result.likelihood) if result.likelihood else None,
        judge_score=result.judge_score,
        copied_fraction=result.copied_fraction,
        parsed=result.parsed,
        truncated=result.truncated,
        usage=Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens),
        error=result.error,
        raw_output=result.raw_output if details else None,
    )


def _deadline(service: FlipService, options: ScoringOptions) -> float:
    settings = service.settings
    if options.timeout_s is None:
        return settings.request_timeout_s
    if options.timeout_s > settings.max_request_timeout_s:
        raise ApiError(
            422, "validation_error",
            f"timeout_s: {options.timeout_s} s is more than the limit of {settings.max_request_timeout_s} s",
            "timeout_s",
        )
    return options.timeout_s


async def _score(
    service: FlipService, items: list[RewardItem], options: ScoringOptions, request: Request
) -> list[ItemResult]:
    """Admission (429 past the queue bound), then the scorer under the request's deadline (504),
    cancelled if the client goes away; every way out aborts the engine work still running."""
    deadline = _deadline(service, options)
    metrics.ITEMS_PER_REQUEST.observe(len(items))

    async def score_within_deadline() -> list[ItemResult]:
        async with asyncio.timeout(deadline):
            return await service.scorer.score([_to_item(i) for i in items], score_options(service, options))

    try:
        with service.admission.admit(len(items), deadline):
            return await cancel_on_disconnect(request, score_within_deadline())
    except QueueFull as exc:
        metrics.REJECTED.inc()
        # Retry-After: 1 s past the queue bound (clients back off further on repeated 429s); past
        # the deadline check, about the time until the queue could finish within the deadline.
        raise ApiError(429, "queue_full", f"server busy: {exc}; retry later",
                       headers={"Retry-After": str(exc.retry_after_s)})
    except TimeoutError:
        metrics.TIMEOUTS.inc()
        raise ApiError(504, "timeout", f"not scored within the deadline of {deadline:g} s; the work was aborted")
    except ClientDisconnected:
        # Nobody is listening; the status is only for the access log and the request metrics.
        raise ApiError(499, "client_disconnected", "the client disconnected; the work was aborted")


def score_options(service: FlipService, options: ScoringOptions) -> ScoreOptions:
    """Per-request options over the server defaults."""
    defaults = service.settings
    return ScoreOptions(
        similarity=options.similarity or defaults.similarity,
        prompt_mode=options.prompt_mode or defaults.prompt_mode,
        method=options.method or defaults.method,
        copy_guard=defaults.copy_guard if options.copy_guard is None else options.copy_guard,
        distractors=defaults.likelihood_distractors if options.distractors is None else options.distractors,
    )


@router.post("/reward", response_model=RewardResponse, response_model_exclude_none=False, responses=ERROR_RESPONSES)
async def reward(body: RewardRequest, request: Request) -> RewardResponse:
    """Score one response against its instruction."""
    service = ready_service(request)
    check_item_limits([body], service.settings, batch=False)
    (result,) = await _score(service, [body], body, request)
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
    # A batch larger than the queue bound could never be admitted: that is a 413, not a 429.
    limit = min(service.settings.max_batch_items, service.settings.max_queued_items)
    if len(body.items) > limit:
        message = f"items: {len(body.items)} items, the limit is {limit} (FLIP_MAX_BATCH_ITEMS)"
        raise ApiError(413, "too_many_items", message, "items")
    check_item_limits(body.items, service.settings, batch=True)
    results = await _score(service, body.items, body, request)
    return BatchRewardResponse(
        model=service.engine.model_name,
        method=body.method or service.settings.method,
        similarity=body.similarity or service.settings.similarity,
        prompt_version=PROMPT_VERSION,
        rewards=[r.reward for r in results],
        results=[_to_result(r, body.details) for r in results],
    )
