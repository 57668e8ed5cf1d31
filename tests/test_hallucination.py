"""The hallucination rate of free-text answers, each claim checked against the figure's hidden truth."""

from __future__ import annotations

import pytest

from vital.io import RecordError
from vital.vqa.hallucination import hallucination_rate

TRUTH = {
    "L": {"lesion": True, "side": "left", "count": 1, "size": "small", "modality": "ct"},
    "N": {"lesion": False, "side": None, "count": 0, "size": None, "modality": "mri"},
}


def test_counts_wrong_claims_and_answers_against_the_truth():
    answers = [
        ("L", "A single small lesion in the left half of this CT."),  # 5 claims, all right
        ("L", "A single small lesion in the right half."),  # side wrong: 1 of 4
        ("N", "A large nodule on the left."),  # lesion, side and size asserted on a clean MRI: 3 of 3 wrong
        ("N", "No lesion is seen."),  # right
        ("L", "The image is of good quality."),  # nothing checkable
    ]
    m = hallucination_rate(answers, TRUTH)
    assert m["answers"] == 5 and m["answers_without_checkable_claims"] == 1
    assert (m["claims_checked"], m["claims_wrong"]) == (5 + 4 + 3 + 1, 1 + 3)
    assert m["claim_rate"] == round(4 / 13, 4)
    assert m["answer_rate"] == 0.5  # 2 of the 4 answers that assert something checkable
    by = m["wrong_share_by_finding"]
    assert by["side"] == round(2 / 3, 4) and by["modality"] == 0.0 and by["lesion"] == round(1 / 4, 4)


def test_truth_written_answers_score_zero_and_flawed_ones_do_not():
    right = [("L", "There is one small lesion on the left."), ("N", "No abnormality is seen.")]
    wrong = [("L", "There is one small lesion on the right."), ("N", "There is a lesion.")]
    assert hallucination_rate(right, TRUTH)["claim_rate"] == 0.0
    assert hallucination_rate(wrong, TRUTH)["answer_rate"] == 1.0


def test_nothing_checkable_gives_no_rate_and_unknown_figures_are_named():
    assert hallucination_rate([("L", "Looks fine to me.")], TRUTH)["claim_rate"] is None
    with pytest.raises(RecordError, match="preds.jsonl: no hidden truth for figure 'X'"):
        hallucination_rate([("X", "A lesion.")], TRUTH, "preds.jsonl")
