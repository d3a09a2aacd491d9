"""Recover chat turns from text that a trainer rendered with a chat template, and strip the
template's special tokens.

Trainers such as OpenRLHF and slime send the prompt (and sometimes prompt + response) as one
decoded string, template tokens included. FLIP needs the user's last instruction and the bare
response, so this module reads the common templates back into messages:

  ChatML (Qwen, SmolLM, Hermes)   <|im_start|>user\\n...<|im_end|>
  Llama 3                         <|start_header_id|>user<|end_header_id|>\\n\\n...<|eot_id|>
  Gemma                           <start_of_turn>user\\n...<end_of_turn>
  Phi-3 / Zephyr                  <|user|>\\n...<|end|> or </s>
  Llama 2 / Mistral               [INST] ... [/INST] ...</s>

Text with none of these markers is taken as plain text. Pure string work: no tokenizer needed,
though the special tokens of one (e.g. the engine's) can be passed in to be stripped as well.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

Messages = list[dict[str, str]]

_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "model": "assistant",
    "gpt": "assistant",
}

# (marker that identifies the template, one turn: role and content)
_TURN_TEMPLATES: list[tuple[str, re.Pattern]] = [
    ("<|im_start|>", re.compile(r"<\|im_start\|>([A-Za-z_]+)\n?(.*?)(?=<\|im_end\|>|<\|im_start\|>|\Z)", re.S)),
    (
        "<|start_header_id|>",
        re.compile(
            r"<\|start_header_id\|>([A-Za-z_]+)<\|end_header_id\|>(.*?)(?=<\|eot_id\|>|<\|start_header_id\|>|\Z)", re.S
        ),
    ),
    ("<start_of_turn>", re.compile(r"<start_of_turn>([A-Za-z_]+)\n?(.*?)(?=<end_of_turn>|<start_of_turn>|\Z)", re.S)),
    (
        "<|user|>",
        re.compile(r"<\|(system|user|assistant)\|>(.*?)(?=<\|end\|>|</s>|<\|(?:system|user|assistant)\|>|\Z)", re.S),
    ),
]
_INST = re.compile(r"\[INST\](.*?)\[/INST\](.*?)(?=\[INST\]|<s>\s*\[INST\]|\Z)", re.S)
_LLAMA2_SYSTEM = re.compile(r"<<SYS>>(.*?)<</SYS>>", re.S)

# Whole template pieces that carry a role name: removed with the role.
_HEADERS = re.compile(
    r"<\|start_header_id\|>[A-Za-z_]*<\|end_header_id\|>\n*"
    r"|<\|im_start\|>[A-Za-z_]*\n?"
    r"|<start_of_turn>[A-Za-z_]*\n?"
    r"|<<SYS>>|<</SYS>>"
)
# Single special tokens of the common templates, plus the generic shapes <|...|> and <｜...｜>.
_COMMON_TOKENS = (
    "</s>",
    "<s>",
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<end_of_turn>",
    "<start_of_turn>",
    "[INST]",
    "[/INST]",
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|begin_of_text|>",
    "<|end|>",
)
_GENERIC_TOKENS = re.compile(r"<\|[A-Za-z0-9_.:-]{1,48}\|>|<｜[^｜\s]{1,48}｜>")


def strip_special_tokens(text: str, extra_tokens: Iterable[str] = ()) -> str:
    """Remove template headers and special tokens; `extra_tokens` (e.g. a tokenizer's
    `all_special_tokens`) are removed too. Surrounding whitespace goes as well."""
    text = _HEADERS.sub("", text)
    for token in sorted({*_COMMON_TOKENS, *(t for t in extra_tokens if t)}, key=len, reverse=True):
        text = text.replace(token, "")
    return _GENERIC_TOKENS.sub("", text).strip()


def parse_chat(text: str) -> Messages | None:
    """The turns of a templated conversation, or None when no known template is found.
    A trailing empty assistant turn (the generation prompt) is kept with content ''."""
    for marker, pattern in _TURN_TEMPLATES:
        if marker in text:
            return _clean_turns([(role, content) for role, content in pattern.findall(text)])
    if "[INST]" in text and "[/INST]" in text:
        turns: list[tuple[str, str]] = []
        for user, assistant in _INST.findall(text):
            system = _LLAMA2_SYSTEM.search(user)
            if system:
                turns.append(("system", system.group(1)))
                user = _LLAMA2_SYSTEM.sub("", user)
            turns += [("user", user), ("assistant", assistant)]
        return _clean_turns(turns)
    return None


def _clean_turns(turns: list[tuple[str, str]]) -> Messages:
    messages = []
    for name, content in turns:
        role = _ROLES.get(name.lower())
        if role is None:  # tool / ipython turns say nothing about the instruction
            continue
        messages.append({"role": role, "content": strip_special_tokens(content)})
    return messages


def instruction_messages(prompt: str | Messages, extra_tokens: Iterable[str] = ()) -> Messages | None:
    """The conversation up to and including the last user message, in the service's `messages`
    form (system/user/assistant, last one the user's instruction). `prompt` may be a message
    list (TRL's conversational form, slime) or text, templated or plain. None when there is no
    non-empty user message."""
    if isinstance(prompt, str):
        messages = parse_chat(prompt)
        if messages is None:
            plain = strip_special_tokens(prompt, extra_tokens)
            return [{"role": "user", "content": plain}] if plain else None
    else:
        messages = [
            {"role": _ROLES.get(str(m.get("role", "")).lower(), ""), "content": message_text(m)} for m in prompt
        ]
        messages = [m for m in messages if m["role"]]
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user" and m["content"].strip()), default=None)
    if last_user is None:
        return None
    return messages[: last_user + 1]


TEXT_PARTS = ("text", "input_text", "output_text")  # chat completions, then the Responses API's in and out


def message_text(message: dict) -> str:
    """The text of a message whose content is a string or a list of parts (OpenAI chat or Responses style)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text") or "") for p in content if isinstance(p, dict) and p.get("type", "text") in TEXT_PARTS
        )
    return ""


def response_from_query(query: str, prompt: str | None, extra_tokens: Iterable[str] = ()) -> str | None:
    """The response inside OpenRLHF's `query` (prompt + response decoded as one string).

    With the prompt: the text after it (the decoded prompt normally starts the query exactly;
    if not, after its first occurrence, then after its template-free form). Without it, or
    when it cannot be found: the last assistant turn of the templated query. None when neither
    works.
    """
    if prompt:
        if query.startswith(prompt):
            return strip_special_tokens(query[len(prompt) :], extra_tokens)
        at = query.find(prompt)
        if at >= 0:
            return strip_special_tokens(query[at + len(prompt) :], extra_tokens)
    turns = parse_chat(query)
    if turns:
        if turns[-1]["role"] == "assistant":
            return turns[-1]["content"]
        return None
    if prompt:
        bare_query, bare_prompt = strip_special_tokens(query, extra_tokens), strip_special_tokens(prompt, extra_tokens)
        if bare_prompt and bare_query.startswith(bare_prompt):
            return bare_query[len(bare_prompt) :].strip()
    return None
