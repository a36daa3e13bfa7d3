"""RULER's scoring and exact match on handcrafted predictions."""

from __future__ import annotations

import pytest

from lceval.metrics import exact_match, score_text, string_match_all, string_match_part


def test_string_match_all_is_a_fraction_of_references_found():
    assert string_match_all("The numbers are 4821 and 77.", ["4821", "77", "903"]) == pytest.approx(2 / 3)
    assert string_match_all("nothing here", ["4821"]) == 0.0
    assert string_match_all("answer: APPLE", ["apple"]) == 1.0  # case-insensitive


def test_multi_value_answers_are_order_free():
    refs = ["301", "774", "129", "558"]
    assert string_match_all("558 129 774 301", refs) == 1.0
    assert string_match_all("301, 774", refs) == 0.5


def test_all_differs_from_part_when_some_references_are_missing():
    refs = ["cedar", "heron", "maple"]
    prediction = "the words are heron and lemur"
    assert string_match_all(prediction, refs) == pytest.approx(1 / 3)
    assert string_match_part(prediction, refs) == 1.0
    assert string_match_part("lemur", refs) == 0.0


def test_averaging_over_samples_differs_between_the_two_metrics():
    samples = [("a b", ["a", "b"]), ("a", ["a", "b"]), ("c", ["a", "b"])]
    all_mean = 100 * sum(string_match_all(p, r) for p, r in samples) / len(samples)
    part_mean = 100 * sum(string_match_part(p, r) for p, r in samples) / len(samples)
    assert all_mean == pytest.approx(50.0) and part_mean == pytest.approx(200 / 3)


def test_substring_matching_is_rulers_rule():
    # RULER's metric is a substring test: a longer number contains the shorter reference
    assert string_match_all("1234", ["123"]) == 1.0


def test_exact_match_needs_the_stop_and_no_extra_tokens():
    assert exact_match([5, 6], [5, 6], stopped=True) == 1.0
    assert exact_match([5, 6, 7], [5, 6], stopped=True) == 0.0  # " 1234" is not " 123"
    assert exact_match([5, 6], [5, 6], stopped=False) == 0.0  # ran out of budget: no end of answer
    assert exact_match([5], [5, 6], stopped=True) == 0.0


def test_unknown_metric_and_empty_references_are_errors():
    with pytest.raises(ValueError, match="unknown text metric"):
        score_text("bleu", "x", ["x"])
    with pytest.raises(ValueError):
        string_match_all("x", [])
