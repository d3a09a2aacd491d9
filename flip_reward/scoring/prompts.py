"""The reconstruction prompts, in one place and versioned.

A prompt is a list of chat messages plus an optional `answer_prefix`: text the assistant turn
starts with, so the model continues it instead of starting from nothing. The engine renders the
messages with the model's own chat template and appends the prefix.

Change PROMPT_VERSION whenever the wording changes, or a scoring change moves rewards (a guard, a
floor, the reward arithmetic): rewards from two versions are not comparable. /info and every reward
response report the version in use; CHANGELOG.md lists what changed in each.
"""

from __future__ import annotations

from dataclasses import dataclass

from flip_reward.config import PromptMode

PROMPT_VERSION = "flip-prompts-v2"

_SYSTEM_PAPER = (
    "You reconstruct instructions. You are shown a response that an AI assistant wrote. "
    "Work out the one instruction from a user that would most plausibly have produced exactly this "
    "response. The instruction should state what the user wanted, the output format they asked for, "
    "and any constraints the response follows. Be concise and concrete. Do not add details the "
    "response does not support, and do not copy its wording or its examples. "
    "First explain your reasoning in a sentence or two, then give the instruction."
)

_SYSTEM_DIRECT = (
    "You reconstruct instructions. You are shown a response that an AI assistant wrote. "
    "Reply with the one instruction from a user that would most plausibly have produced this response: "
    "its intent, output format and constraints, in one or two concise sentences. "
    "Do not add details the response does not support and do not copy its wording. "
    "Reply with the instruction only."
)

_ASK_PAPER = 'Answer in JSON with exactly two keys: "REASONING" (brief) and "INFERRED INSTRUCTION".'
ASK_DIRECT = "What instruction did the user give?"


@dataclass(frozen=True)
class Prompt:
    messages: list[dict[str, str]]
    answer_prefix: str = ""
    stop: tuple[str, ...] = ()  # generation ends at any of these


def _render_context(context: list[dict[str, str]]) -> str:
    lines = [f"{turn['role'].capitalize()}: {turn['content']}" for turn in context]
    return "\n".join(lines)


def build_reconstruction_prompt(
    response: str, context: list[dict[str, str]] | None = None, mode: PromptMode = "paper"
) -> Prompt:
    """Messages asking the model to infer the instruction behind `response`.

    `context` holds the conversation turns before the instruction (for a multi-turn chat): the
    model sees them as background, and the instruction to infer is the user's last message.
    """
    system = _SYSTEM_PAPER if mode == "paper" else _SYSTEM_DIRECT
    ask = _ASK_PAPER if mode == "paper" else ASK_DIRECT
    messages = [{"role": "system", "content": system}]
    parts = []
    if context:
        parts.append(
            "Earlier conversation, for context only:\n"
            f"{_render_context(context)}\n\n"
            "The user then sent one more message, and the assistant answered it with the response below. "
            "Infer that last user message."
        )
    parts.append(f'Response:\n"""\n{response}\n"""')
    parts.append(ask)
    messages.append({"role": "user", "content": "\n\n".join(parts)})
    if mode == "paper":
        return Prompt(messages=messages, answer_prefix='{"REASONING": "')
    return Prompt(messages=messages)


# --- backward likelihood: score the real instruction as the model's answer, no decoding

_SYSTEM_LIKELIHOOD = (
    "You reconstruct instructions. Given a response written by an AI assistant, write the user "
    "instruction that most plausibly produced it."
)
# Stands in for the response when measuring how likely the instruction is on its own (the PMI baseline).
NO_RESPONSE = "(no response)"

# Unrelated instructions scored after the same response (likelihood_distractors): a response that
# makes any instruction likely ("Sure! Here is my answer...") says nothing about its own. Written
# for this project, varied in task and form; none is drawn from an eval set.
DISTRACTOR_INSTRUCTIONS = (
    "Write a short poem about the ocean.",
    "Explain how vaccines train the immune system.",
    "Write a Python function that returns the largest number in a list.",
    "Give me three tips for a job interview.",
    "Translate into French: the meeting starts at noon.",
    "Summarize the causes of the First World War in two sentences.",
    "Suggest a name for a bakery that sells only bread.",
    "What is the difference between weather and climate?",
)


def build_likelihood_prompt(response: str, context: list[dict[str, str]] | None = None) -> Prompt:
    """Messages after which the real instruction is scored token by token as the assistant's reply."""
    parts = []
    if context:
        parts.append(f"Earlier conversation, for context only:\n{_render_context(context)}")
    parts.append(f'Response:\n"""\n{response}\n"""')
    parts.append("What was the instruction?")
    messages = [
        {"role": "system", "content": _SYSTEM_LIKELIHOOD},
        {"role": "user", "content": "\n\n".join(parts)},
    ]
    return Prompt(messages=messages)


# --- LLM-as-a-judge baseline (the paper's main comparison): a pointwise 1-10 score

_SYSTEM_JUDGE = (
    "You are a strict judge of AI assistant answers. Rate how well the response answers the "
    "user's instruction: helpful, correct, complete and following every constraint."
)


def build_judge_prompt(instruction: str, response: str, context: list[dict[str, str]] | None = None) -> Prompt:
    parts = []
    if context:
        parts.append(f"Earlier conversation:\n{_render_context(context)}")
    parts.append(f'Instruction:\n"""\n{instruction}\n"""')
    parts.append(f'Response:\n"""\n{response}\n"""')
    parts.append("Rate the response from 1 (useless) to 10 (excellent). Reply with the number only.")
    messages = [{"role": "system", "content": _SYSTEM_JUDGE}, {"role": "user", "content": "\n\n".join(parts)}]
    return Prompt(messages=messages, answer_prefix="Rating: ")
