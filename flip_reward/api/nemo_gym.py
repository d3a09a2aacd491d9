"""NeMo Gym's resources-server protocol: POST /seed_session and POST /verify, on the serving path
every scoring route takes (flip_reward/api/serving.py: readiness, limits, deadline, admission, the error
shape; the API key middleware covers these paths like any other).

Read at NVIDIA-NeMo/Gym 07d6b0d and NVIDIA-NeMo/RL 7ea279a:
- /verify gets the dataset row (`responses_create_params`, with `input` messages) plus `response`,
  an OpenAI Responses object, and answers the same body with a top-level `reward`
  (nemo_gym/base_resources_server.py BaseVerifyRequest / BaseVerifyResponse). The instruction is
  the last user message of `input` (`instructions` and earlier turns are context); the response is
  the text of the last `message` item of `response.output` ("" when there is none: the floor).
- The extra logs are top-level numbers beside `reward`, where Gym's metrics and verifiers'
  `nemo_gym` taskset read them (its reward records every numeric field as a metric). They are not
  `reward_components`: NeMo RL requires `reward == sum(reward_components)` and fails the step
  otherwise (nemo_rl/environments/nemo_gym.py L1080-1105).
- A sample the service cannot score is an HTTP error (503/502/413/422, as the other trainer
  routes), never reward 0: Gym's agent raises on it, its /run fails with a 500, and NeMo RL
  retries the prompt as an infrastructure failure (nemo_rl/environments/nemo_gym.py L130-161,
  L697-712).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flip_reward.api.errors import ApiError
from flip_reward.api.results import to_result
from flip_reward.api.schemas import Message, RewardItem, ScoringOptions
from flip_reward.api.serving import ERROR_RESPONSES, ScoringRequest, ready_service, score_items
from flip_reward.integrations.chat_template import instruction_messages, message_text
from flip_reward.integrations.extra_logs import extra_logs

router = APIRouter(tags=["trainer protocols"])


class GymVerifyRequest(BaseModel):
    """Gym's verify body: the dataset row (any other fields are echoed back) and the response."""

    model_config = ConfigDict(extra="allow")
    responses_create_params: dict[str, Any] = Field(description="The row's request; `input` holds the messages.")
    response: dict[str, Any] = Field(description="The policy's OpenAI Responses object.")


def gym_messages(params: dict[str, Any]) -> list[dict] | None:
    """The conversation up to the last user message of a Responses request (`instructions` first)."""
    given = params.get("input")
    items = [{"role": "user", "content": given}] if isinstance(given, str) else given
    if not isinstance(items, list):
        return None
    # function calls, their outputs and reasoning items have no role: they are not turns
    turns = [
        {"role": str(i["role"]), "content": message_text(i)} for i in items if isinstance(i, dict) and i.get("role")
    ]
    if isinstance(params.get("instructions"), str) and params["instructions"].strip():
        turns.insert(0, {"role": "system", "content": params["instructions"]})
    return instruction_messages(turns)


def gym_response_text(response: dict[str, Any]) -> str:
    """The text of the last assistant message item of a Responses object's `output`."""
    output = response.get("output")
    if not isinstance(output, list):
        raise ApiError("validation_error", "response.output: expected a list of output items", "response.output")
    messages = [i for i in output if isinstance(i, dict) and i.get("type", "message") == "message" and "content" in i]
    return message_text(messages[-1]) if messages else ""


def gym_item(body: GymVerifyRequest) -> RewardItem:
    turns = gym_messages(body.responses_create_params)
    if not turns:
        raise ApiError(
            "unreadable_sample",
            "responses_create_params.input: no user message to take the instruction from",
            "responses_create_params.input",
        )
    try:
        return RewardItem(messages=[Message(**m) for m in turns], response=gym_response_text(body.response))
    except ValidationError as exc:
        raise ApiError("unreadable_sample", f"invalid sample: {exc.errors()[0]['msg']}", "body") from None


@router.post("/seed_session", responses=ERROR_RESPONSES)
async def gym_seed_session(request: Request) -> dict[str, Any]:
    """Gym's per-rollout session start: nothing to set up; 503 while the models load, so a rollout
    does not generate against a service that cannot score it yet."""
    ready_service(request)
    return {}


@router.post("/verify", responses=ERROR_RESPONSES)
async def gym_verify(body: GymVerifyRequest, request: Request) -> dict[str, Any]:
    """NeMo Gym verify: the body back with `reward` and the extra logs as top-level numbers."""
    item = gym_item(body)
    _, (scored,) = await score_items(
        request,
        ScoringRequest(
            [item],
            ScoringOptions(),
            route="/verify",
            field="body",
            on_item_error="trainer",
            field_of=lambda i: "response",
        ),
    )
    result = to_result(scored, False).model_dump()
    return {
        **body.model_dump(),
        "reward": float(result["reward"]),
        **extra_logs(result),
        "flip_unscorable_reason": result["unscorable"] or "",
    }
