"""LLaVA-Med metric definitions, checked against hand-computed cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from vital.vqa.items import VQAItem
from vital.vqa.metrics import (
    by_kind,
    closed_baselines,
    closed_hit,
    exact_match,
    exact_match_legacy,
    first_yes_no,
    normalize_answer,
    score_item,
    substring_hit,
    summarize,
    token_scores,
    yes_no_conditioning,
    yes_no_reference,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # "yes," vs "yes": a comma glued to a word becomes a space, one before a space is deleted
        ("yes,", "yes"),
        ("Yes, it is.", "yes it is"),
        ("YES", "yes"),
        # articles dropped, case folded
        ("The left lung", "left lung"),
        ("an axial CT", "axial ct"),
        # number words -> digits, incl. LLaVA-Med's "none" -> "0"
        ("Two lesions!", "2 lesions"),
        ("none", "0"),
        ("ten", "10"),
        # a digit,digit group deletes every listed punctuation mark instead of spacing it
        ("1,000 cells", "1000 cells"),
        ("1,000 cells-left", "1000 cellsleft"),
        # periods: dropped unless a digit follows
        ("3.5 cm.", "3.5 cm"),
        ("No.", "no"),
        ("e.g. the CT", "eg ct"),
        # slash/hyphen/brackets: spaced when glued, deleted when next to a space
        ("left/right", "left right"),
        ("left / right", "left right"),
        ("x-ray", "x ray"),
        ("(CT)", "ct"),
        ("mass (left)", "mass left"),
        # colons and apostrophes are not in LLaVA-Med's list and survive
        ("answer: yes", "answer: yes"),
        # contractions restored
        ("dont know", "don't know"),
        ("isnt", "isn't"),
        ("couldntve", "couldn't've"),
        ("", ""),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_only_first_32_periods_are_dropped_like_llava_med():
    # LLaVA-Med passes re.UNICODE (32) as re.sub's count: the 33rd period survives
    text = "a." * 33
    assert normalize_answer(text) == "a" * 32 + "a."


def test_token_scores_hand_computed():
    # ref {left, lung}; pred {left, upper, lobe}: tp=1, fp=2, fn=1
    s = token_scores("the left upper lobe", "left lung")
    assert s.precision == pytest.approx(1 / 3)
    assert s.recall == pytest.approx(1 / 2)
    assert s.f1 == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))


def test_token_scores_counts_prediction_multiplicity_like_llava_med():
    # tp counts every predicted "left" (2), fn the missing "lung" (1): recall 2/3, not 1/2
    s = token_scores("left left", "left lung")
    assert s.recall == pytest.approx(2 / 3)
    assert s.precision == 1.0


def test_token_scores_normalises_before_counting():
    assert token_scores("Two.", "2").recall == 1.0
    assert token_scores("", "left").recall == 0.0
    assert token_scores("right", "left").f1 == 0.0


def test_exact_match_and_legacy():
    assert exact_match("The liver.", "liver") == 1.0
    assert exact_match("liver mass", "liver") == 0.0
    # legacy: distinct reference words found (1) / predicted tokens (3)
    assert exact_match_legacy("liver is enlarged", "liver") == pytest.approx(1 / 3)
    assert exact_match_legacy("", "liver") == 0.0


def test_legacy_closed_check_is_a_substring_test():
    # microsoft/LLaVA-Med#12: "no" is a substring of "normal" and "not"
    assert substring_hit("normal", "no") == 1.0
    assert substring_hit("it is not clear", "no") == 1.0
    assert substring_hit("yes and no", "yes") == 1.0


def test_corrected_closed_check_uses_first_yes_no_word():
    assert closed_hit("normal", "no") == 0.0
    assert closed_hit("No, it is normal.", "no") == 1.0
    assert closed_hit("yes,", "Yes") == 1.0
    assert closed_hit("yes and no", "no") == 0.0
    assert closed_hit("nothing abnormal", "no") == 0.0
    assert closed_hit("none", "no") == 0.0  # "none" normalises to "0"
    assert first_yes_no("Well, no. Yes?") == "no"
    assert first_yes_no("unclear") is None


def test_corrected_closed_check_for_non_yes_no_answers_is_whole_word():
    assert closed_hit("the lesion is on the left", "Left") == 1.0
    assert closed_hit("leftover contrast", "left") == 0.0
    assert substring_hit("leftover contrast", "left") == 1.0
    assert closed_hit("right lung", "left lung") == 0.0
    assert closed_hit("CT scan", "CT") == 1.0


def _item(qid, answer, kind, domain=None):
    return VQAItem(qid, Path("x.png"), "q?", answer, kind, domain=domain)


def test_score_item_uses_the_answer_type():
    assert set(score_item(_item("1", "yes", "CLOSED"), "yes")) == {
        "closed_accuracy",
        "closed_accuracy_legacy",
    }
    assert "open_recall" in score_item(_item("2", "left", "OPEN"), "left")


def test_summarize_hand_computed():
    items = [
        _item("c1", "no", "CLOSED", "ct_scan"),  # "normal": legacy hit, corrected miss
        _item("c2", "yes", "CLOSED", "ct_scan"),  # "yes,": both hit
        _item("c3", "no", "CLOSED", "mri"),  # "yes": both miss
        _item("o1", "left lung", "OPEN", "mri"),  # recall 1/2
        _item("o2", "liver", "OPEN", "ct_scan"),  # recall 1
    ]
    preds = ["normal", "yes,", "yes", "the left kidney", "Liver."]
    out = summarize(items, preds)
    assert out["n_closed"] == 3 and out["n_open"] == 2
    assert out["closed_accuracy"] == pytest.approx(1 / 3)
    assert out["closed_accuracy_legacy"] == pytest.approx(2 / 3)
    assert out["open_recall"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["open_exact_match"] == pytest.approx(0.5)
    ct = out["by_domain"]["ct_scan"]
    assert ct["n_closed"] == 2 and ct["closed_accuracy"] == pytest.approx(0.5)
    assert ct["closed_accuracy_legacy"] == 1.0 and ct["open_recall"] == 1.0
    mri = out["by_domain"]["mri"]
    assert mri["closed_accuracy"] == 0.0 and mri["open_recall"] == pytest.approx(0.5)
    assert "by_question_type" not in out  # no item records one


def test_summarize_omits_scores_of_empty_groups_and_checks_lengths():
    out = summarize([_item("c", "yes", "CLOSED")], ["yes"])
    assert out["n_open"] == 0 and "open_recall" not in out
    with pytest.raises(ValueError, match="1 items but 2 predictions"):
        summarize([_item("c", "yes", "CLOSED")], ["yes", "no"])


def test_yes_no_conditioning_hand_computed():
    items = [
        _item("y1", "yes", "CLOSED", "ct_scan"),  # "Yes." -> yes
        _item("y2", "Yes", "CLOSED", "ct_scan"),  # "normal" has no yes/no word
        _item("n1", "no", "CLOSED", "mri"),  # "no, yes" -> the first word: no
        _item("n2", "no", "CLOSED", "mri"),  # "yes" -> yes
        _item("n3", "no", "CLOSED", "mri"),  # "not really" -> neither
        _item("s", "left", "CLOSED", "mri"),  # not yes/no: not counted
        _item("o", "yes", "OPEN", "mri"),  # open: not counted
    ]
    preds = ["Yes.", "normal", "no, yes", "yes", "not really", "left", "yes"]
    out = yes_no_conditioning(items, preds)
    assert out == pytest.approx(
        {
            "closed_yes_rate_on_yes": 1 / 2,
            "closed_yes_rate_on_no": 1 / 3,
            "closed_discrimination": 1 / 2 - 1 / 3,
            "closed_without_yes_no": 2 / 5,
        }
    )
    by_domain = summarize(items, preds)["by_domain"]
    # a group with only "yes" references has a yes rate but no discrimination
    assert (
        by_domain["ct_scan"]["closed_yes_rate_on_yes"] == 0.5
        and "closed_discrimination" not in by_domain["ct_scan"]
    )
    assert by_domain["mri"]["closed_yes_rate_on_no"] == pytest.approx(1 / 3)


def test_discrimination_ignores_a_constant_lean_that_accuracy_rewards():
    items = [_item(str(i), a, "CLOSED") for i, a in enumerate(["yes", "yes", "yes", "no"])]
    always_yes = summarize(items, ["yes"] * 4)
    assert always_yes["closed_accuracy"] == 0.75 and always_yes["closed_discrimination"] == 0.0
    right = summarize(items, ["yes", "yes", "yes", "no"])
    assert right["closed_discrimination"] == 1.0 and right["closed_without_yes_no"] == 0.0
    assert yes_no_conditioning([_item("o", "liver", "OPEN")], ["liver"]) == {}


def test_by_kind_reads_each_question_kind_apart():
    # a model that names the modality but guesses the side: the per-kind figures show it, the overall mean hides it
    def item(qid, answer, answer_type, kind):
        return VQAItem(qid, Path("x.png"), "q?", answer, answer_type, question_type=kind)

    items = [
        item("m1", "ct", "OPEN", "modality"),
        item("m2", "yes", "CLOSED", "modality"),
        item("m3", "no", "CLOSED", "modality"),
        item("s1", "left", "OPEN", "side"),
        item("s2", "yes", "CLOSED", "side"),
        item("s3", "no", "CLOSED", "side"),
    ]
    got = by_kind(summarize(items, ["ct", "yes", "no", "right", "yes", "yes"], by=("question_type",)))
    assert got == {
        "open_recall_modality": 1.0,
        "closed_discrimination_modality": 1.0,
        "open_recall_side": 0.0,
        "closed_discrimination_side": 0.0,
    }
    assert by_kind(summarize(items, ["ct"] * 6, by=())) == {}  # no kinds asked for, none reported


def test_closed_baselines():
    items = [_item(str(i), a, "CLOSED") for i, a in enumerate(["yes", "Yes.", "yes", "no"])]
    items.append(_item("o", "liver", "OPEN"))
    b = closed_baselines(items)
    assert b == {"n_closed": 4, "closed_chance": 0.5, "closed_majority": 0.75}
    assert closed_baselines([_item("o", "liver", "OPEN")]) == {"n_closed": 0}


def test_a_yes_no_reference_with_more_words_follows_its_first_word():
    assert [yes_no_reference(a) for a in ("Yes, it is", "no.", "No; none seen", "yes")] == [
        "yes",
        "no",
        "no",
        "yes",
    ]
    assert yes_no_reference("no evidence of tumour") is None and yes_no_reference("normal") is None
    item = _item("q", "Yes, it is", "CLOSED")
    assert score_item(item, "Yes") == {"closed_accuracy": 1.0, "closed_accuracy_legacy": 1.0}
    assert score_item(item, "No, it is not") == {"closed_accuracy": 0.0, "closed_accuracy_legacy": 0.0}
    items = [item, _item("n", "No, there is none.", "CLOSED")]
    out = summarize(items, ["Yes", "yes"])
    assert out["closed_yes_rate_on_yes"] == 1.0 and out["closed_yes_rate_on_no"] == 1.0
    assert out["closed_discrimination"] == 0.0 and out["closed_accuracy"] == 0.5
    assert closed_baselines(items)["closed_majority"] == 0.5


@pytest.mark.parametrize("reference", ["[]", "-", "?", "...", ""])
def test_a_reference_that_normalises_to_nothing_is_never_a_hit(reference):
    closed = VQAItem("q", Path("x.png"), "Is it?", reference, "CLOSED")
    opened = VQAItem("q", Path("x.png"), "What?", reference, "OPEN")
    for prediction in ("yes", "no", "", "?"):
        assert set(score_item(closed, prediction).values()) == {0.0}
        assert set(score_item(opened, prediction).values()) == {0.0}
