import pytest

from flip_reward.scoring.parse import parse_direct, parse_instruction, strip_think

# (model output, expected instruction, parsed?)
MESSY_OUTPUTS = [
    ('{"REASONING": "a poem", "INFERRED INSTRUCTION": "Write a poem about rain."}', "Write a poem about rain.", True),
    ('```json\n{"REASONING": "x", "INFERRED INSTRUCTION": "Sort the list."}\n```', "Sort the list.", True),
    ('<think>hmm, let me see</think>{"INFERRED INSTRUCTION": "Name three fruits."}', "Name three fruits.", True),
    ('{"reasoning": "r", "inferred_instruction": "Summarise the article."}', "Summarise the article.", True),
    (
        '{"Reasoning": "r", "Inferred-Instruction": "Translate to French."} Hope this helps!',
        "Translate to French.",
        True,
    ),
    ('{"REASONING": "r", "INFERRED INSTRUCTION": "Explain photosynthesis', "Explain photosynthesis", True),
    ('{"REASONING": "r", "instruction": "List primes below 10."}', "List primes below 10.", True),
    ("Reasoning: it is a recipe.\nInferred instruction: Give a pancake recipe.", "Give a pancake recipe.", True),
    ('{"INFERRED INSTRUCTION": "Write a haiku", "REASONING": "short poem"}', "Write a haiku", True),
    ("The user probably wanted a story about dragons.", "The user probably wanted a story about dragons.", False),
    ('{"REASONING": "only reasoning here"}', None, False),
    ("", "", False),
]


@pytest.mark.parametrize("raw,expected,parsed", MESSY_OUTPUTS)
def test_parse_instruction_table(raw, expected, parsed):
    result = parse_instruction(raw)
    assert result.parsed is parsed
    if expected is not None:
        assert result.instruction == expected


def test_unparsed_fallback_is_cleaned_raw_text():
    result = parse_instruction('{"REASONING": "only reasoning here"}')
    assert result.parsed is False
    assert "only reasoning here" in result.instruction
    assert not result.instruction.startswith("{")


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("<think>a</think> answer", "answer"),
        ("reasoning without an opening tag</think>answer", "answer"),
        ("answer<think>never closed", "answer"),
        ("<THINK>a</THINK>b<think>c</think>d", "bd"),
        ("no tags", "no tags"),
    ],
)
def test_strip_think(raw, expected):
    assert strip_think(raw) == expected


def test_parse_direct_strips_label_and_quotes():
    assert parse_direct('Instruction: "Write a limerick."').instruction == "Write a limerick."
    assert parse_direct("Write a limerick.\n").parsed is True
    assert parse_direct("   ").parsed is False
