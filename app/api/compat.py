"""Trainer protocols: the request and response shapes OpenRLHF and slime use for a remote reward
model, translated to the same scorer path as /batch_reward.

- OpenRLHF (`--remote_rm_url http://HOST:PORT/get_reward`): `query` is prompt + response decoded
  as one string; the response is recovered with `prompts`, the chat template's tokens stripped.
- slime (`--rm-type remote_rm --rm-url http://HOST:PORT/slime_reward --reward-key reward`).

The instruction is the last user message of the prompt (`?instruction_from=prompt`, the
default) or the label (`?instruction_from=label`, when the dataset's label column holds the
raw instruction). A sample that cannot be read gets `null` and an error, never a made-up 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError

from app.api.errors import ApiError
from app.api.reward import ERROR_RESPONSES, _score, _to_result, ready_service
from app.api.schemas import (
    Message,
    OpenRLHFRequest,
    OpenRLHFResponse,
    RewardItem,
    RewardResult,
    ScoringOptions,
    SlimeRequest,
    SlimeResponse,
    Usage,
)
from app.config import Similarity
from app.integrations.chat_template import (
    instruction_messages,
    parse_chat,
    response_from_query,
    strip_special_tokens,
)
from app.service import FlipService

router = APIRouter(tags=["trainer protocols"])

InstructionFrom = Literal["prompt", "label"]


class _Unreadable(ValueError):
    """This sample cannot be turned into (instruction, response): its result says why."""


def _special_tokens(service: FlipService) -> tuple[str, ...]:
    return tuple(getattr(service.engine.tokenizer, "all_special_tokens", None) or ())


def _item(messages: list[dict] | None, response: str | None) -> RewardItem:
    if not messages:
        raise _Unreadable("no user instruction found in the prompt")
    if not response or not response.strip():
        raise _Unreadable("the response is empty")
    try:
        return RewardItem(messages=[Message(**m) for m in messages], response=response)
    except ValidationError as exc:
        raise _Unreadable(f"invalid sample: {exc.errors()[0]['msg']}") from exc


def _label_messages(label: object, tokens: Sequence[str]) -> list[dict] | None:
    if isinstance(label, (str, list)):
        return instruction_messages(label, tokens)
    raise _Unreadable("instruction_from=label needs a label that is a string or a message list")


async def _score_or_error(
    service: FlipService, items: list[RewardItem | str], similarity: Similarity | None, request: Request
) -> list[RewardResult]:
    """Scores the RewardItems in one engine batch; a string stands for an unreadable sample."""
    todo = [item for item in items if isinstance(item, RewardItem)]
    scored = iter(await _score(service, todo, ScoringOptions(similarity=similarity), request) if todo else [])
    return [
        _to_result(next(scored), False)
        if isinstance(item, RewardItem)
        else RewardResult(id=None, method=service.settings.method, reward=None, inferred_instruction=None,
                          similarities=None, parsed=None,
                          truncated=False, usage=Usage(prompt_tokens=0, completion_tokens=0), error=item)
        for item in items
    ]


def _as_list(value: object, n: int, field: str, single: bool) -> list:
    if value is None:
        return [None] * n
    if single:
        return [value]
    if not isinstance(value, list) or len(value) != n:
        raise ApiError(422, "validation_error", f"{field}: expected a list of {n} (one per query)", field)
    return value


@router.post("/get_reward", response_model=OpenRLHFResponse, responses=ERROR_RESPONSES)
async def openrlhf_get_reward(
    body: OpenRLHFRequest,
    request: Request,
    instruction_from: InstructionFrom = Query("prompt", description="Where the instruction comes from."),
    similarity: Similarity | None = Query(None, description="f1, embedding or hybrid; unset: the server default."),
) -> OpenRLHFResponse:
    """OpenRLHF remote reward model: one query or a batch."""
    service = ready_service(request)
    single = isinstance(body.query, str)
    queries = [body.query] if single else body.query
    if not queries:
        raise ApiError(422, "validation_error", "query: must not be empty", "query")
    limit = service.settings.max_batch_items
    if len(queries) > limit:
        raise ApiError(413, "too_many_items", f"query: {len(queries)} queries, the limit is {limit}", "query")
    prompts = _as_list(body.prompts, len(queries), "prompts", single)
    labels = _as_list(body.labels, len(queries), "labels", single)
    tokens = _special_tokens(service)

    items: list[RewardItem | str] = []
    for query, prompt, label in zip(queries, prompts, labels):
        try:
            if instruction_from == "label":
                messages = _label_messages(label, tokens)
            elif prompt:
                messages = instruction_messages(prompt, tokens)
            else:  # old OpenRLHF sends only the query: its turns before the last assistant turn
                turns = parse_chat(query) or []
                messages = instruction_messages(turns[:-1], tokens) if turns and turns[-1]["role"] == "assistant" \
                    else None
            items.append(_item(messages, response_from_query(query, prompt, tokens)))
        except _Unreadable as exc:
            items.append(str(exc))

    results = await _score_or_error(service, items, similarity, request)
    rewards = [r.reward for r in results]

    def per_item(pick) -> list[float | None]:
        """One value per item; None where the item has no reward or the method has no such value."""
        values = []
        for r in results:
            value = None if r.reward is None else pick(r)
            values.append(None if value is None else float(value))
        return values

    return OpenRLHFResponse(
        rewards=rewards,
        scores=rewards,  # rewards are already in [0, 1], the range OpenRLHF's filtering expects
        extra_logs={
            "flip_f1": per_item(lambda r: r.similarities and r.similarities.f1),
            "flip_embedding": per_item(lambda r: r.similarities and r.similarities.embedding),
            "flip_pmi": per_item(lambda r: r.likelihood and r.likelihood.pmi),
            "flip_copied_fraction": per_item(lambda r: r.copied_fraction),
            "flip_parsed": per_item(lambda r: r.parsed),
            "flip_truncated": per_item(lambda r: r.truncated),
        },
        inferred_instructions=[r.inferred_instruction for r in results],
        errors=[r.error for r in results],
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
        messages = (_label_messages(body.label, tokens) if instruction_from == "label"
                    else instruction_messages(body.prompt, tokens))
        item: RewardItem | str = _item(messages, strip_special_tokens(body.response, tokens))
    except _Unreadable as exc:
        item = str(exc)
    (result,) = await _score_or_error(service, [item], similarity, request)
    return SlimeResponse(**result.model_dump())
