"""Trainer protocols: the request and response shapes OpenRLHF and slime use for a remote reward
model, translated to the serving path /batch_reward uses (flip_reward/api/serving.py).

- OpenRLHF (v0.10.2+: `--reward.remote_url http://HOST:PORT/get_reward`, older: `--remote_rm_url`):
  `query` is prompt + response decoded as one string; the response is recovered with `prompts`,
  the chat template's tokens stripped.
- slime (`--rm-type remote_rm --rm-url http://HOST:PORT/slime_reward --reward-key reward`).

The instruction is the last user message of the prompt (`?instruction_from=prompt`, the
default) or the label (`?instruction_from=label`, when the dataset's label column holds the
raw instruction). Every sample in a 200 has a number: an empty response gets the floor reward
with its reason; a sample the service cannot read is a 422 naming it, and one it failed to score
fails the request with a status the trainer retries (503) — never a null or a made-up 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError

from flip_reward.api.errors import ApiError
from flip_reward.api.results import to_result
from flip_reward.api.schemas import (
    Message,
    OpenRLHFRequest,
    OpenRLHFResponse,
    RewardItem,
    ScoringOptions,
    SlimeRequest,
    SlimeResponse,
)
from flip_reward.api.serving import ERROR_RESPONSES, ScoringRequest, ready_service, score_items
from flip_reward.config import Similarity
from flip_reward.integrations.chat_template import (
    instruction_messages,
    parse_chat,
    response_from_query,
    strip_special_tokens,
)
from flip_reward.integrations.extra_logs import column_logs, extra_logs
from flip_reward.service import FlipService

router = APIRouter(tags=["trainer protocols"])

InstructionFrom = Literal["prompt", "label"]


class _Unreadable(ValueError):
    """This sample cannot be turned into (instruction, response)."""


def _special_tokens(service: FlipService) -> tuple[str, ...]:
    tokenizer = service.engine.tokenizer if service.engine is not None else None
    return tuple(getattr(tokenizer, "all_special_tokens", None) or ())


def _item(messages: list[dict] | None, response: str | None) -> RewardItem:
    if not messages:
        raise _Unreadable("no user instruction found in the prompt")
    if response is None:
        raise _Unreadable("no response found after the prompt")
    try:
        return RewardItem(messages=[Message(**m) for m in messages], response=response)
    except ValidationError as exc:
        raise _Unreadable(f"invalid sample: {exc.errors()[0]['msg']}") from exc


def _label_messages(label: object, tokens: Sequence[str]) -> list[dict] | None:
    if isinstance(label, (str, list)):
        return instruction_messages(label, tokens)
    raise _Unreadable("instruction_from=label needs a label that is a string or a message list")


def _unreadable(field: str, exc: _Unreadable) -> ApiError:
    return ApiError("unreadable_sample", f"{field}: {exc}", field)


def _as_list(value: object, n: int, field: str, single: bool) -> list:
    if value is None:
        return [None] * n
    if single:
        return [value]
    if not isinstance(value, list) or len(value) != n:
        raise ApiError("validation_error", f"{field}: expected a list of {n} (one per query)", field)
    return value


@router.post("/get_reward", response_model=OpenRLHFResponse, responses=ERROR_RESPONSES)
async def openrlhf_get_reward(
    body: OpenRLHFRequest,
    request: Request,
    instruction_from: InstructionFrom = Query("prompt", description="Where the instruction comes from."),
    similarity: Similarity | None = Query(None, description="f1, embedding or hybrid; unset: the server default."),
) -> OpenRLHFResponse:
    """OpenRLHF remote reward model: one query or a batch; a number for every query."""
    service = ready_service(request)
    single = isinstance(body.query, str)
    queries: list[str] = [body.query] if isinstance(body.query, str) else body.query
    if not queries:
        raise ApiError("validation_error", "query: must not be empty", "query")
    prompts = _as_list(body.prompts, len(queries), "prompts", single)
    labels = _as_list(body.labels, len(queries), "labels", single)
    tokens = _special_tokens(service)

    items: list[RewardItem] = []
    for index, (query, prompt, label) in enumerate(zip(queries, prompts, labels)):
        try:
            if instruction_from == "label":
                messages = _label_messages(label, tokens)
            elif prompt:
                messages = instruction_messages(prompt, tokens)
            else:  # old OpenRLHF sends only the query: its turns before the last assistant turn
                turns = parse_chat(query) or []
                messages = (
                    instruction_messages(turns[:-1], tokens) if turns and turns[-1]["role"] == "assistant" else None
                )
            items.append(_item(messages, response_from_query(query, prompt, tokens)))
        except _Unreadable as exc:
            raise _unreadable(f"query[{index}]", exc) from None

    service, scored = await score_items(
        request,
        ScoringRequest(
            items,
            ScoringOptions(similarity=similarity),
            route="/get_reward",
            field="query",
            on_item_error="trainer",
            field_of=lambda i: f"query[{i}]",
        ),
    )
    results = [to_result(r, False).model_dump() for r in scored]
    rewards = [float(r["reward"]) for r in results]
    return OpenRLHFResponse(
        rewards=rewards,
        scores=rewards,  # rewards are already in [0, 1], the range OpenRLHF's filtering expects
        extra_logs=column_logs(results, scored[0].method),
        unscorable=[r["unscorable"] for r in results],
        inferred_instructions=[r["inferred_instruction"] for r in results],
    )


@router.post("/slime_reward", response_model=SlimeResponse, responses=ERROR_RESPONSES)
async def slime_reward(
    body: SlimeRequest,
    request: Request,
    instruction_from: InstructionFrom = Query("prompt", description="Where the instruction comes from."),
    similarity: Similarity | None = Query(None, description="f1, embedding or hybrid; unset: the server default."),
) -> SlimeResponse:
    """slime remote reward model: one sample; pick the reward with `--reward-key reward`."""
    service = ready_service(request)
    tokens = _special_tokens(service)
    try:
        messages = (
            _label_messages(body.label, tokens)
            if instruction_from == "label"
            else instruction_messages(body.prompt, tokens)
        )
        item = _item(messages, strip_special_tokens(body.response, tokens))
    except _Unreadable as exc:
        raise _unreadable("label" if instruction_from == "label" else "prompt", exc) from None
    _, (scored,) = await score_items(
        request,
        ScoringRequest(
            [item],
            ScoringOptions(similarity=similarity),
            route="/slime_reward",
            field="body",
            on_item_error="trainer",
            field_of=lambda i: "response",
        ),
    )
    result = to_result(scored, False).model_dump()
    return SlimeResponse(**result, extra_logs=extra_logs(result))
