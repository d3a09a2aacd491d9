from flip_reward.scoring.prompts import PROMPT_VERSION, build_reconstruction_prompt


def test_paper_prompt_asks_for_both_json_keys():
    prompt = build_reconstruction_prompt("Paris is the capital of France.")
    system, user = prompt.messages
    assert system["role"] == "system" and user["role"] == "user"
    assert "Paris is the capital of France." in user["content"]
    assert '"REASONING"' in user["content"] and '"INFERRED INSTRUCTION"' in user["content"]
    assert prompt.answer_prefix.startswith("{")


def test_context_turns_are_shown_and_last_message_is_asked_for():
    context = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}]
    prompt = build_reconstruction_prompt("Here is the recipe.", context)
    user = prompt.messages[1]["content"]
    assert "User: Hi there" in user and "Assistant: Hello! How can I help?" in user
    assert user.index("Hi there") < user.index("Here is the recipe.")
    assert "last user message" in user


def test_direct_mode_has_no_json_and_no_prefix():
    prompt = build_reconstruction_prompt("x", mode="direct")
    assert "JSON" not in prompt.messages[1]["content"]
    assert prompt.answer_prefix == ""


def test_prompt_version_is_set():
    assert PROMPT_VERSION.startswith("flip-prompts-v")
