"""Request and response models of the HTTP API (the OpenAPI document at /docs comes from these)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from flip_reward.config import Method, PromptMode, Similarity
from flip_reward.scoring.outcomes import ItemErrorCode, UnscorableReason


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or whitespace only")
    return value


def _valid_unicode(value: str) -> str:
    # JSON may carry lone surrogates (\ud800); they cannot be tokenized or sent back as UTF-8.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains an unpaired surrogate (not valid Unicode)") from None
    return value


Text = Annotated[str, AfterValidator(_valid_unicode)]
NonBlank = Annotated[str, AfterValidator(_valid_unicode), AfterValidator(_not_blank)]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: Text


class RewardItem(BaseModel):
    """One (instruction, response) pair. Give the instruction as `prompt`, or as `messages`: a
    chat whose last message is the user's instruction (earlier turns are shown as context)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "sample-0",
                    "prompt": "Give me three tips for staying focused while studying.",
                    "response": "1. Put your phone in another room. 2. Work in 25-minute blocks "
                    "with short breaks. 3. Write down the one goal for each session before you start.",
                }
            ]
        },
    )

    id: Text | None = Field(None, max_length=256, description="Echoed back in the result.")
    prompt: NonBlank | None = Field(None, description="The instruction the response answers.")
    messages: list[Message] | None = Field(
        None, min_length=1, description="Chat form: the last message is the user's instruction."
    )
    response: Text = Field(
        description="The response to score. Empty (or only <think>, or only copies of the instruction): the floor "
        "reward FLIP_UNSCORABLE_REWARD, with `unscorable` saying why."
    )

    @model_validator(mode="after")
    def _one_instruction(self) -> RewardItem:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        if self.messages is not None:
            last = self.messages[-1]
            if last.role != "user":
                raise ValueError("messages: the last message must be the user's instruction (role 'user')")
            _not_blank(last.content)
        return self

    @property
    def instruction(self) -> str:
        if self.prompt is not None:
            return self.prompt
        assert self.messages, "validated: prompt or messages is set"
        return self.messages[-1].content

    @property
    def context(self) -> tuple[dict[str, str], ...]:
        if self.messages is None:
            return ()
        return tuple(m.model_dump() for m in self.messages[:-1])


class ScoringOptions(BaseModel):
    method: Method | None = Field(
        None,
        description="generate (infer the instruction, compare), likelihood (log-probability of the real "
        "instruction given the response) or judge (1-10 LLM-judge baseline); unset: the server default.",
    )
    similarity: Similarity | None = Field(
        None, description="generate only: f1, embedding or hybrid; unset: the server default."
    )
    prompt_mode: PromptMode | None = Field(
        None,
        description="generate only: direct (the instruction only) or paper (reasoning + JSON); unset: the server "
        "default.",
    )
    copy_guard: bool | None = Field(
        None,
        description="Score the response without the passages it copies from the instruction (and, for "
        "likelihood, score keyword stuffing 0); unset: the server default.",
    )
    distractors: int | None = Field(
        None,
        ge=0,
        le=8,
        description="likelihood only: how many unrelated built-in instructions to contrast the real one with "
        "(0: plain pmi); unset: the server default.",
    )
    details: bool = Field(False, description="Include the model's raw output in each result.")
    timeout_s: float | None = Field(
        None,
        gt=0,
        description="Deadline for this request in seconds (unset: the server default; at most "
        "the server's max_request_timeout_s). Past it: 504, and the engine work is aborted.",
    )


class RewardRequest(RewardItem, ScoringOptions):
    pass


class BatchRewardRequest(ScoringOptions):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {"id": "a", "prompt": "Name a primary colour.", "response": "Red is a primary colour."},
                        {
                            "id": "b",
                            "messages": [{"role": "user", "content": "Translate 'thank you' into French."}],
                            "response": "Merci.",
                        },
                    ],
                    "similarity": "hybrid",
                }
            ]
        },
    )

    items: list[RewardItem] = Field(min_length=1, description="Scored together; results keep this order.")


class Similarities(BaseModel):
    f1: float
    # None on an f1 request: it does not load the embedder (flip_reward/embeddings/on_demand.py)
    embedding: float | None = None
    hybrid: float | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class Likelihood(BaseModel):
    conditional: float | None = Field(
        description="Mean log-probability per scored instruction token, given the response."
    )
    unconditional: float | None = Field(description="The same without the response (pmi baseline only).")
    pmi: float | None = Field(None, description="conditional - unconditional.")
    scored_tokens: int
    reward_without_guard: float | None = Field(
        None, description="The reward before the keyword-stuffing guard set it to 0; present only then."
    )
    response_fluency: float | None = Field(
        None,
        description="Mean log-probability per response token as the model reads it (the stuffing guard's "
        "input); with FLIP_LIKELIHOOD_PREFILL (the default, in-process engine), computed only for a response that "
        "is mostly the instruction's words (a stuffing candidate), null otherwise.",
    )
    distractor_score: float | None = Field(
        None, description="The mean score (pmi) of the unrelated instructions after the same response."
    )
    contrast: float | None = Field(
        None, description="pmi - distractor_score: the reward is sigmoid(contrast / scale) when distractors are on."
    )
    keyword_stuffing: bool | None = Field(
        None, description="The guard found the response to be the instruction's words without its order: reward 0."
    )


class RewardResult(BaseModel):
    id: str | None
    method: Method
    reward: float | None = Field(
        description="In [0, 1] (the floor FLIP_UNSCORABLE_REWARD when `unscorable` is set); null only when the "
        "service failed on this item (see `error` and `code`)."
    )
    unscorable: UnscorableReason | None = Field(
        None,
        description="Why the response could not earn a reward (it got the floor): empty_response, "
        "think_only (nothing outside <think>, or cut off inside one) or all_copied (only copies of the instruction).",
    )
    guard: Literal["none", "copies_deleted", "keyword_stuffing", "unscorable"] | None = Field(
        None,
        description="The guard that decided the reward: copies_deleted (scored without copied passages), "
        "keyword_stuffing (likelihood: reward 0), unscorable (the floor); none. Null with an error.",
    )
    inferred_instruction: str | None = Field(description="generate: the instruction the model inferred.")
    similarities: Similarities | None = Field(description="generate: every similarity; reward is the chosen one.")
    likelihood: Likelihood | None = Field(None, description="likelihood: the log-probabilities behind the reward.")
    judge_score: int | None = Field(None, description="judge: the 1-10 score.")
    copied_fraction: float | None = Field(
        None, description="Share of the response's words copied from the instruction; the guard scores without them."
    )
    parsed: bool | None = Field(description="False when no instruction could be parsed and raw text was compared.")
    truncated: bool = Field(description="True when the response (or context) was cut to fit the model.")
    usage: Usage
    error: str | None = Field(None, description="Why this item has no reward (a message).")
    code: ItemErrorCode | None = Field(
        None,
        description="Machine-readable kind of `error`: empty_instruction, context_overflow, engine_error, "
        "unreadable_logprobs, no_output, judge_no_score, unreadable_sample.",
    )
    raw_output: str | None = Field(None, description="The model's output (with details=true).")


class RewardResponse(RewardResult):
    model: str
    similarity: Similarity
    prompt_version: str


class BatchRewardResponse(BaseModel):
    model: str
    method: Method
    similarity: Similarity
    prompt_version: str
    rewards: list[float | None] = Field(description="One per item, in input order.")
    results: list[RewardResult]


# --- best-of-N ranking (POST /rank)


class RankRequest(ScoringOptions):
    """One instruction (`prompt`, or `messages` whose last message is the user's instruction)
    and N candidate responses."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "prompt": "Name a primary colour.",
                    "responses": ["Red is a primary colour.", "I like turtles.", "Blue."],
                }
            ]
        },
    )

    prompt: NonBlank | None = Field(None, description="The instruction the responses answer.")
    messages: list[Message] | None = Field(None, min_length=1, description="Chat form of the instruction.")
    responses: list[Text] = Field(min_length=1, description="The N candidates, scored in one engine batch.")

    @model_validator(mode="after")
    def _one_instruction(self) -> RankRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        if self.messages is not None:
            if self.messages[-1].role != "user":
                raise ValueError("messages: the last message must be the user's instruction (role 'user')")
            _not_blank(self.messages[-1].content)
        return self

    def reward_items(self) -> list[RewardItem]:
        return [
            RewardItem(id=str(i), prompt=self.prompt, messages=self.messages, response=response)
            for i, response in enumerate(self.responses)
        ]


class RankResponse(BaseModel):
    model: str
    similarity: Similarity
    prompt_version: str
    rewards: list[float | None] = Field(description="One per response, in input order.")
    ranking: list[int] = Field(
        description="Response indices, best first; equal rewards keep input order; unscored responses come last."
    )
    best_index: int | None = Field(description="Index of the best response; null when none could be scored.")
    results: list[RewardResult]


# --- trainer protocols (flip_reward/api/compat.py)


class OpenRLHFRequest(BaseModel):
    """What OpenRLHF posts to --remote_rm_url: `query` is prompt + response decoded as one string
    (chat-template tokens included); `prompts` the prompt strings; `labels` the --label_key column.
    Each is one item or a list (a batch)."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "query": [
                        "<|im_start|>user\nName a primary colour.<|im_end|>\n<|im_start|>assistant\n"
                        "Red is a primary colour.<|im_end|>"
                    ],
                    "prompts": ["<|im_start|>user\nName a primary colour.<|im_end|>\n<|im_start|>assistant\n"],
                    "labels": [None],
                }
            ]
        },
    )

    query: str | list[str] = Field(description="Prompt + response as one decoded string, or a list of them.")
    prompts: str | list[str] | None = Field(None, description="The prompt of each query (recommended).")
    labels: object | None = Field(None, description="The --label_key value of each query.")


class OpenRLHFResponse(BaseModel):
    """A number for every query: a query the service cannot score fails the whole request with an
    HTTP error (OpenRLHF retries it), never a null here."""

    rewards: list[float] = Field(description="One per query (the floor for an unscorable one).")
    scores: list[float] = Field(description="The same values (in [0, 1]), for OpenRLHF's dynamic filtering.")
    extra_logs: dict[str, list[float]] = Field(
        description="Per-query finite numbers OpenRLHF turns into tensors and logs; the same keys for every query "
        'of a method (docs/trainers.md, "Extra logs").'
    )
    unscorable: list[UnscorableReason | None] = Field(description="Per query: why it got the floor, or null.")
    inferred_instructions: list[str | None]


class SlimeRequest(BaseModel):
    """What slime's remote_rm posts to --rm-url."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [{"prompt": "Name a primary colour.", "response": "Red.", "label": None}]},
    )

    prompt: str | list[dict] = Field(description="Prompt text (templated or plain) or a message list.")
    response: str = Field(description="The generated response.")
    label: object | None = Field(None, description="The --label-key value of the sample.")


class SlimeResponse(RewardResult):
    """`reward` (pick it with slime's `--reward-key reward`; always a number in a 200) and the usual
    per-item details, plus `extra_logs` (finite numbers, the same keys as OpenRLHF's)."""

    extra_logs: dict[str, float] = Field(description="Finite per-sample figures: guard, copied fraction, ...")


class ErrorBody(BaseModel):
    type: str = Field(description="Machine-readable kind, e.g. validation_error, field_too_long, engine_unavailable.")
    message: str = Field(description="What was wrong; names the field or the limit and its value.")
    field: str | None = Field(None, description="The offending field, e.g. items[3].response.")
    request_id: str | None = Field(None, description="The X-Request-ID of the request (also in the log).")


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx has this shape."""

    error: ErrorBody
