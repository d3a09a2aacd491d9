"""Request and response models of the HTTP API (the OpenAPI document at /docs comes from these)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from app.config import Similarity


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
    response: NonBlank = Field(description="The response to score.")

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
        return self.prompt if self.prompt is not None else self.messages[-1].content

    @property
    def context(self) -> tuple[dict[str, str], ...]:
        if self.messages is None:
            return ()
        return tuple(m.model_dump() for m in self.messages[:-1])


class ScoringOptions(BaseModel):
    similarity: Similarity | None = Field(None, description="f1, embedding or hybrid; unset: the server default.")
    details: bool = Field(False, description="Include the model's raw output in each result.")


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
    embedding: float
    hybrid: float


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class RewardResult(BaseModel):
    id: str | None
    reward: float | None = Field(description="In [0, 1]; null when this item could not be scored (see error).")
    inferred_instruction: str | None
    similarities: Similarities | None
    parsed: bool | None = Field(description="False when no instruction could be parsed and raw text was compared.")
    truncated: bool = Field(description="True when the response (or context) was cut to fit the model.")
    usage: Usage
    error: str | None = None
    raw_output: str | None = Field(None, description="The model's output (with details=true).")


class RewardResponse(RewardResult):
    model: str
    similarity: Similarity
    prompt_version: str


class BatchRewardResponse(BaseModel):
    model: str
    similarity: Similarity
    prompt_version: str
    rewards: list[float | None] = Field(description="One per item, in input order.")
    results: list[RewardResult]


class ErrorBody(BaseModel):
    type: str = Field(description="Machine-readable kind, e.g. validation_error, field_too_long, engine_unavailable.")
    message: str = Field(description="What was wrong; names the field or the limit and its value.")
    field: str | None = Field(None, description="The offending field, e.g. items[3].response.")
    request_id: str | None = Field(None, description="The X-Request-ID of the request (also in the log).")


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx has this shape."""

    error: ErrorBody
