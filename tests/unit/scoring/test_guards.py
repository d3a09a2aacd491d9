"""flip_reward/scoring/guards.py: the copy guard and the keyword-stuffing test, on text alone."""

from flip_reward.scoring.guards import (
    STOP_WORDS,
    copied_spans,
    instruction_word_share,
    is_keyword_stuffing,
    is_stuffing_candidate,
    remove_copied,
)

INSTRUCTION = "Write a short poem about the autumn rain in the city"


def test_copied_spans_are_found_in_the_response():
    response = "Sure! You asked: write a short poem about the autumn rain. Here it is."
    spans = copied_spans(INSTRUCTION, response, min_words=3)
    assert [response[s:e] for s, e in spans] == ["write a short poem about the autumn rain"]


def test_remove_copied_keeps_what_the_response_adds():
    response = "Sure! You asked: write a short poem about the autumn rain. Grey drops drum on tin roofs."
    kept, share = remove_copied(INSTRUCTION, response)
    assert kept == "Sure! You asked: . Grey drops drum on tin roofs."
    assert 0.4 < share < 0.6
    restated, share = remove_copied(INSTRUCTION, "Here is my answer to your request: " + INSTRUCTION)
    assert share > 0.6 and "poem" not in restated


def test_a_copy_with_the_small_words_dropped_is_still_a_copy():
    response = "As I understand it: write short poem autumn rain city. Done."
    kept, share = remove_copied(INSTRUCTION, response)
    assert "poem" not in kept and share > 0.5
    # a copied phrase of small words: every word counts too
    assert remove_copied("Who are you?", "You ask: who are you? I am a model.")[0] == "You ask: ? I am a model."


def test_no_copy_in_an_honest_answer():
    response = "Grey drops drum on tin roofs; umbrellas bloom along wet streets."
    assert copied_spans(INSTRUCTION, response) == []
    assert remove_copied(INSTRUCTION, response) == (response, 0.0)


def test_keyword_stuffing_needs_both_instruction_words_and_implausible_order():
    stuffed = "poem autumn rain city poem short write rain autumn city poem " * 2
    assert instruction_word_share(INSTRUCTION, stuffed) == 1.0
    assert is_keyword_stuffing(INSTRUCTION, stuffed, fluency=-7.0)
    # the same words read fluently (a rewrite of the instruction's own text) are not stuffing
    assert not is_keyword_stuffing(INSTRUCTION, stuffed, fluency=-2.5)
    honest = "Grey drops drum on tin roofs; umbrellas bloom along wet city streets."
    assert instruction_word_share(INSTRUCTION, honest) < 0.2
    assert not is_keyword_stuffing(INSTRUCTION, honest, fluency=-7.0)
    assert not is_keyword_stuffing(INSTRUCTION, stuffed, fluency=None)
    # a short answer picked out of the instruction is not stuffing, however oddly it reads
    assert not is_keyword_stuffing(INSTRUCTION, "autumn rain", fluency=-7.0)


def test_stuffing_candidates_are_found_on_text_alone():
    stuffed = "city rain autumn poem short write " * 3
    assert is_stuffing_candidate(INSTRUCTION, stuffed)
    assert not is_stuffing_candidate(INSTRUCTION, "city rain autumn poem")  # too short to tell
    assert not is_stuffing_candidate(INSTRUCTION, "Grey drops drum on tin roofs across the city " * 2)
    # the fluency is the other half, and only a candidate needs it
    assert is_keyword_stuffing(INSTRUCTION, stuffed, fluency=-7.0)
    assert not is_keyword_stuffing(INSTRUCTION, "Grey drops drum on tin roofs " * 4, fluency=-7.0)


def test_stop_words_are_lower_case_function_words_only():
    assert all(w == w.lower() and w.isalpha() for w in STOP_WORDS)
    assert {"the", "a", "of", "about", "in", "you", "are", "who"} <= STOP_WORDS
    # instruction verbs and numbers are content: a copied "give three tips" is still a copy
    assert not {"write", "give", "three", "explain", "poem", "list"} & STOP_WORDS
