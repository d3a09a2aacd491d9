"""Pull the inferred instruction out of whatever a small model wrote.

Small models wrap JSON in code fences, think aloud in <think> blocks, stop half-way through a
string, misspell keys, or skip JSON altogether. We try, in order: a JSON object (repaired with
json-repair when broken), a labelled line ("Inferred instruction: ..."), and finally the cleaned
raw text, reported with parsed=False so nobody mistakes it for a real parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import json_repair

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_CODE_FENCE = re.compile(r"```[a-zA-Z0-9_-]*")
# "INFERRED INSTRUCTION", "inferred_instruction", "Inferred-Instruction", "instruction"...
_LABEL = re.compile(r"[\"']?(?:inferred[\s_-]*)?instruction[\"']?\s*[:=]\s*(.+)", re.IGNORECASE | re.DOTALL)
_REASONING_LABEL = re.compile(r"[\"']?reasoning[\"']?\s*[:=]", re.IGNORECASE)
_KEY_LABEL = re.compile(r"[{,]?\s*[\"']?[A-Za-z_ ]{3,30}[\"']\s*:\s*[\"']?")


@dataclass(frozen=True)
class ParsedInstruction:
    instruction: str
    parsed: bool


def strip_think(text: str) -> str:
    """Remove reasoning blocks: closed <think>...</think>, text before a lone </think>
    (templates that open the block in the prompt), and an unclosed <think> to the end."""
    text = _THINK_BLOCK.sub("", text)
    lower = text.lower()
    if "</think>" in lower:
        text = text[lower.rindex("</think>") + len("</think>") :]
    lower = text.lower()
    if "<think>" in lower:
        text = text[: lower.index("<think>")]
    return text.strip()


def _normalise_key(key: str) -> str:
    return re.sub(r"[^a-z]", "", key.lower())


def _from_json(text: str) -> str | None:
    start = text.find("{")
    if start < 0:
        return None
    obj = json_repair.loads(text[start:])
    objects = obj if isinstance(obj, list) else [obj]
    for candidate in objects:
        if not isinstance(candidate, dict):
            continue
        by_key = {_normalise_key(str(k)): v for k, v in candidate.items()}
        for key in ("inferredinstruction", "instruction", "inferred"):
            value = by_key.get(key)
            if isinstance(value, str) and value.strip():
                return value
        for key, value in by_key.items():  # any other spelling that mentions an instruction
            if "instruction" in key and isinstance(value, str) and value.strip():
                return value
    return None


def _from_label(text: str) -> str | None:
    match = _LABEL.search(text)
    if not match:
        return None
    value = match.group(1)
    # Stop at a following REASONING field or the end of a JSON-ish string.
    reasoning = _REASONING_LABEL.search(value)
    if reasoning:
        value = value[: reasoning.start()]
    value = value.strip().rstrip("}").strip().rstrip(",").strip()
    return value or None


def _clean(text: str) -> str:
    text = text.strip().strip("{}[]").strip()
    text = re.sub(r"\s+", " ", text)
    return text.strip(" \"'`")


def parse_instruction(raw: str) -> ParsedInstruction:
    """Extract the inferred instruction from a model output (prefix already prepended)."""
    text = _CODE_FENCE.sub("", strip_think(raw))
    for extract in (_from_json, _from_label):
        value = extract(text)
        if value:
            cleaned = _clean(value)
            if cleaned:
                return ParsedInstruction(cleaned, parsed=True)
    # No instruction found: compare the text itself, without the JSON key labels around it.
    return ParsedInstruction(_clean(_KEY_LABEL.sub(" ", text)), parsed=False)


def parse_direct(raw: str) -> ParsedInstruction:
    """Direct mode: the output is the instruction itself, perhaps with a label or quotes."""
    text = _CODE_FENCE.sub("", strip_think(raw))
    labelled = _from_label(text)
    if labelled:
        text = labelled
    cleaned = _clean(text)
    return ParsedInstruction(cleaned, parsed=bool(cleaned))


_SCORE = re.compile(r"(?<![\d.])(10|[1-9])(?:\s*(?:/|out of)\s*10)?(?!\d|\.\d)")


def parse_judge_score(raw: str) -> int | None:
    """The first score 1-10 in a judge's output ("8", "Rating: 7/10", "**9** out of 10"), or None."""
    text = strip_think(raw)
    for match in _SCORE.finditer(text):
        return int(match.group(1))
    return None
