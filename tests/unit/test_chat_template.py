"""Reading trainer-rendered chat templates back into turns."""

import pytest

from flip_reward.integrations.chat_template import (
    instruction_messages,
    parse_chat,
    response_from_query,
    strip_special_tokens,
)

CHATML_PROMPT = (
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nName a primary colour.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
LLAMA3_PROMPT = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nName a primary colour.<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
GEMMA_PROMPT = "<bos><start_of_turn>user\nName a primary colour.<end_of_turn>\n<start_of_turn>model\n"
PHI3_PROMPT = "<|system|>\nBe brief.<|end|>\n<|user|>\nName a primary colour.<|end|>\n<|assistant|>\n"
MISTRAL_PROMPT = "<s>[INST] Hi [/INST] Hello!</s>[INST] Name a primary colour. [/INST]"


@pytest.mark.parametrize("prompt", [CHATML_PROMPT, LLAMA3_PROMPT, GEMMA_PROMPT, PHI3_PROMPT, MISTRAL_PROMPT])
def test_last_user_message_is_the_instruction(prompt):
    messages = instruction_messages(prompt)
    assert messages[-1] == {"role": "user", "content": "Name a primary colour."}
    assert all(m["role"] in {"system", "user", "assistant"} for m in messages)


def test_earlier_turns_are_kept_as_context():
    messages = instruction_messages(CHATML_PROMPT)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == "Hello!"


def test_plain_prompt_and_message_lists():
    assert instruction_messages("  Name a colour. ") == [{"role": "user", "content": "Name a colour."}]
    conversation = [
        {"role": "system", "content": "x"},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "tool", "content": "t"},
    ]
    assert instruction_messages(conversation)[-1] == {"role": "user", "content": "Q2"}
    parts = [{"role": "user", "content": [{"type": "text", "text": "Describe "}, {"type": "text", "text": "it"}]}]
    assert instruction_messages(parts) == [{"role": "user", "content": "Describe it"}]
    assert instruction_messages([{"role": "system", "content": "only a system turn"}]) is None
    assert instruction_messages("<|im_end|>") is None


@pytest.mark.parametrize(
    "prompt,tail",
    [
        (CHATML_PROMPT, "Red.<|im_end|>\n<|endoftext|><|endoftext|>"),
        (LLAMA3_PROMPT, "Red.<|eot_id|>"),
        (GEMMA_PROMPT, "Red.<end_of_turn>\n<eos>"),
        (PHI3_PROMPT, "Red.<|end|><|endoftext|>"),
        (MISTRAL_PROMPT, " Red.</s>"),
    ],
)
def test_response_recovered_from_query(prompt, tail):
    assert response_from_query(prompt + tail, prompt) == "Red."


def test_response_without_prompt_uses_last_assistant_turn():
    assert response_from_query(CHATML_PROMPT + "Red.<|im_end|>", None) == "Red."
    assert response_from_query(LLAMA3_PROMPT + "Red.<|eot_id|>", None) == "Red."
    assert response_from_query("no template here", None) is None


def test_prompt_found_inside_query_and_after_stripping():
    # a BOS the policy's tokenizer added in front of the prompt
    assert response_from_query("<s>" + CHATML_PROMPT + "Red.<|im_end|>", CHATML_PROMPT) == "Red."
    assert (
        response_from_query("Question: name a colour. Answer: Red.</s>", "<s>Question: name a colour.")
        == "Answer: Red."
    )


def test_strip_special_tokens_with_tokenizer_tokens():
    assert strip_special_tokens("<|im_start|>assistant\nRed.<|im_end|>") == "Red."
    assert strip_special_tokens("Red.<｜end▁of▁sentence｜>") == "Red."
    assert strip_special_tokens("Red.[EOS_X]", extra_tokens=["[EOS_X]"]) == "Red."
    assert strip_special_tokens("a < b and c | d > e") == "a < b and c | d > e"


def test_parse_chat_none_without_template():
    assert parse_chat("just text") is None
