"""The one serving path of every scoring route (/reward, /batch_reward, /rank, /get_reward,
/slime_reward), so that a new route cannot forget a step:

  readiness (503) -> items per request vs the batch limit and the queue bound (413: a batch that
  could never be admitted) -> per-field limits (413) -> the deadline (422 past the largest) ->
  admission (429 with Retry-After) -> its turn to start, or shed while waiting (429 with
  Retry-After) -> the scorer under what is left of the deadline (504), cancelled when the client
  disconnects (499) -> the guard and reward metrics, by method and route.

Two answers to "this item has no reward":
- report (/reward, /batch_reward, /rank): the item keeps `reward: null` with its `error` and `code`.
- trainer (/get_reward, /slime_reward; the adapters use /batch_reward and apply the same rule):
  the whole request fails with an HTTP status the trainer's retry logic handles (503 for an engine
  error, 502 when the model gave no usable output, 413/422 for an input that can never be scored),
  so a trainer never meets a null inside a 200.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Request

from flip_reward import metrics
from flip_reward.api.disconnect import ClientDisconnected, cancel_on_disconnect
from flip_reward.api.errors import ApiError
from flip_reward.api.limits import check_item_limits
from flip_reward.api.results import fail_on_item_errors, record_results
from flip_reward.api.schemas import ErrorResponse, RewardItem, ScoringOptions
from flip_reward.batching import QueueFull, Shed, Ticket
from flip_reward.scoring.scorer import ItemResult, ScoreItem, ScoreOptions
from flip_reward.service import FlipService

# Documented so that the OpenAPI document (and the fuzz tests that read it) knows every answer.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in (
        (400, "The body is not readable JSON text (e.g. not UTF-8)."),
        (408, "The body took too long to arrive."),
        (413, "Over a limit: body bytes, items, characters per field or messages; the message names it."),
        (422, "Invalid input; `field` names the offending field."),
        (
            429,
            "The queue cannot take this work within its deadline, or the work was shed before it started "
            "when it could no longer finish in time (see Retry-After).",
        ),
        (502, "Trainer routes: the model gave no usable output for an item (generate/judge only)."),
        (503, "The models are loading, or the engine failed (see Retry-After)."),
        (504, "Not scored within the deadline; the work was aborted."),
    )
}

OnItemError = Literal["report", "trainer"]


@dataclass(frozen=True)
class ScoringRequest:
    """What a route hands the serving path: the items and their options, the route (a metrics
    label), `field` naming the list in a 413 (items, responses, query), `field_of(i)` naming item i
    in a per-item error, and what an item the service failed on becomes (`report`: its error in the
    result; `trainer`: the request fails with an HTTP error the trainer retries)."""

    items: Sequence[RewardItem]
    options: ScoringOptions
    route: str
    field: str
    on_item_error: OnItemError = "report"
    field_of: Callable[[int], str] | None = None


def ready_service(request: Request) -> FlipService:
    service: FlipService = request.app.state.service
    if not service.ready:
        raise ApiError("not_ready", service.not_ready_reason(), headers={"Retry-After": "5"})
    return service


def request_deadline(service: FlipService, options: ScoringOptions) -> float:
    settings = service.settings
    if options.timeout_s is None:
        return settings.request_timeout_s
    if options.timeout_s > settings.max_request_timeout_s:
        raise ApiError(
            "validation_error",
            f"timeout_s: {options.timeout_s} s is more than the limit of {settings.max_request_timeout_s} s",
            "timeout_s",
        )
    return options.timeout_s


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


async def score_items(request: Request, work: ScoringRequest) -> tuple[FlipService, list[ItemResult]]:
    """Score the request's items as one engine batch through every step above."""
    items, options, field = work.items, work.options, work.field
    service = ready_service(request)
    settings = service.settings
    name = work.field_of or (lambda i: f"{field}[{i}]")
    # A batch larger than the queue bound could never be admitted: that is a 413, not a 429.
    limit = min(settings.max_batch_items, settings.max_queued_items)
    if len(items) > limit:
        setting = "FLIP_MAX_BATCH_ITEMS" if limit == settings.max_batch_items else "FLIP_MAX_QUEUED_ITEMS"
        raise ApiError("too_many_items", f"{field}: {len(items)} items, the limit is {limit} ({setting})", field)
    check_item_limits(list(items), settings, item_field=None if field == "body" else name)
    deadline = request_deadline(service, options)
    resolved = score_options(service, options)
    metrics.ITEMS_PER_REQUEST.observe(len(items))

    scorer = service.scorer
    assert scorer is not None  # ready_service: the models are loaded

    admission = service.admission

    async def score_within_deadline(ticket: Ticket) -> list[ItemResult]:
        await admission.start(ticket)  # its turn, or Shed while it waits: a 429 before any engine work
        async with asyncio.timeout(ticket.time_left()):  # what is left of the deadline after the wait
            return await scorer.score([_to_score_item(i) for i in items], resolved)

    try:
        with admission.admit(len(items), deadline) as ticket:
            results = await cancel_on_disconnect(request, score_within_deadline(ticket))
    except QueueFull as exc:
        metrics.REJECTED.inc()
        # Retry-After: 1 s past the queue bound (clients back off further on repeated 429s); past
        # the deadline check, about the time until the queue could finish within the deadline; shed
        # while waiting, about the time the work ahead of it takes.
        raise ApiError(
            "shed" if isinstance(exc, Shed) else "queue_full",
            f"server busy: {exc}; retry later",
            headers={"Retry-After": str(exc.retry_after_s)},
        ) from None
    except TimeoutError:
        metrics.TIMEOUTS.inc()
        raise ApiError(
            "timeout",
            f"not scored within the deadline of {deadline:g} s; the work was aborted",
            headers={"Retry-After": "5"},
        ) from None
    except ClientDisconnected:
        # Nobody is listening; the status is only for the access log and the request metrics.
        raise ApiError("client_disconnected", "the client disconnected; the work was aborted") from None
    record_results(results, resolved.method, work.route)
    if work.on_item_error == "trainer":
        fail_on_item_errors(results, name)
    return service, results


def _to_score_item(item: RewardItem) -> ScoreItem:
    return ScoreItem(instruction=item.instruction, response=item.response, context=item.context, id=item.id)
