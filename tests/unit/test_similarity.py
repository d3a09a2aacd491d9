import numpy as np
import pytest

from flip_reward.scoring.similarity import hybrid, normalise_words, paired_cosine_01, word_f1


def test_normalise_drops_case_punctuation_and_articles():
    assert normalise_words("The Cat, an owl and A dog!") == ["cat", "owl", "and", "dog"]


@pytest.mark.parametrize(
    "pred,ref,expected",
    [
        ("write a poem", "Write the poem.", 1.0),  # articles and punctuation ignored
        ("write poem about rain", "write poem", 2 * (2 / 4) * 1.0 / (2 / 4 + 1.0)),  # P=1/2, R=1 -> 2/3
        ("cat cat dog", "cat dog dog", 2 / 3),  # multiset overlap: cat x1, dog x1 -> P=R=2/3
        ("alpha", "beta", 0.0),
        ("", "beta", 0.0),
        ("the a an", "the", 0.0),  # nothing left after normalisation
    ],
)
def test_word_f1_hand_computed(pred, ref, expected):
    assert word_f1(pred, ref) == pytest.approx(expected)


def test_paired_cosine_is_rowwise_and_clipped():
    a = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    b = np.array([[2.0, 0.0], [-1.0, 0.0], [1.0, 1.0]])
    assert paired_cosine_01(a, b).tolist() == [1.0, 0.0, 0.0]


def test_hybrid_weights():
    assert hybrid(f1=0.2, embedding=0.6, embedding_weight=0.5) == pytest.approx(0.4)
    assert hybrid(f1=0.2, embedding=0.6, embedding_weight=1.0) == pytest.approx(0.6)
