"""Generation metrics against hand-computed values."""

from __future__ import annotations

import pytest

from mtft.data.config import GENERATION_METRICS
from mtft.eval.metrics import METRICS, accuracy, chrf, exact_match, normalize, rouge_l, token_f1


def test_every_metric_the_data_config_accepts_is_computed():
    assert set(METRICS) == set(GENERATION_METRICS)


def test_normalisation_is_squads():
    assert normalize("The  Cat, sat!") == "cat sat"
    assert exact_match("the answer: 42.", "Answer 42") == 1.0
    assert exact_match("43", "42") == 0.0


def test_accuracy_compares_the_answer_line_or_the_pattern():
    assert accuracy("positive\nbecause it is good", "Positive") == 1.0
    assert accuracy("negative", "positive") == 0.0
    assert accuracy("I think the result is 12.", "#### 12", answer_pattern=r"(\d+)") == 1.0
    assert accuracy("no number here", "12", answer_pattern=r"(\d+)") == 0.0


def test_token_f1():
    # output tokens: cat sat mat (after normalisation); reference: cat sat on mat -> common 3, P 1, R 3/4
    assert token_f1("the cat sat mat", "cat sat on the mat") == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0 and token_f1("dog", "cat") == 0.0


def test_rouge_l_is_the_lcs_f_measure():
    # LCS of "a b c d" and "a c d e" is "a c d" (3): P 3/4, R 3/4
    assert rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    assert rouge_l("a b", "c d") == 0.0 and rouge_l("same words", "Same Words") == 1.0


def test_chrf_is_sacrebleus_sentence_chrf_scaled_to_one():
    assert chrf("the cat sat", "the cat sat") == pytest.approx(1.0)
    assert 0.0 <= chrf("a dog", "the cat sat") < 0.1
