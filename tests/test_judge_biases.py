"""The heuristic judge's biases (length, confident wording, image-only errors): each moves scores the way
it should, at 0 the judge is the pre-bias judge, and the simulated clinician shares none of them."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from vital.demo.heuristic_judge import HeuristicBackend, HeuristicJudge
from vital.demo.simulated_clinician import truth_utility
from vital.params import JudgeParams, Params
from vital.paths import Paths
from vital.schema import FigureRecord

RECORD = FigureRecord(
    pair_id="P1_F1",
    pmid="1",
    fig_caption="Axial CT scan showing a single small hypodense lesion in the left half of the image (arrow).",
    image="images/ct_scan/P1_F1.png",
)
TRUTH = {"lesion": True, "side": "left", "count": 1, "size": "small", "modality": "ct"}
# asserts no finding (no lesion noun, side, size, count or modality word) and does not hedge
PADDING = (
    " The exposure and positioning are adequate for interpretation, and the image quality is good "
    "throughout the field of view, with clear margins and even contrast."
)


def conv(*answers: str) -> list[dict]:
    turns = []
    for a in answers:
        turns += [{"from": "human", "value": "<image>\nWhere is the lesion?"}, {"from": "gpt", "value": a}]
    return turns


GOOD = conv("There is a single small hypodense lesion in the left half of the image.")
WRONG_SIDE = conv("There is a single small hypodense lesion in the right half of the image.")
VAGUE = conv("There may be some abnormality.")
WRONG_MODALITY = conv("This MRI shows a single small lesion in the left half of the image.")
WRONG_HEDGED = conv("There may be a single small lesion in the right half of the image.")
UNBIASED = {"length_bias": 0.0, "confidence_leniency": 0.0, "image_blindness": 0.0}


@pytest.mark.parametrize(
    ("conversation", "at_noise_0", "at_noise_1_5"),
    [(GOOD, 8.3, 10.0), (WRONG_SIDE, 4.8, 2.47), (VAGUE, 2.3, 2.76), (WRONG_MODALITY, 5.3, 3.8),
     (WRONG_HEDGED, 2.8, 3.98)],
)  # fmt: skip
def test_bias_zero_is_the_judge_before_biases(conversation, at_noise_0, at_noise_1_5):
    # scores pinned from the judge as it was before the bias parameters existed (git 5527d68)
    assert HeuristicJudge(noise=0, **UNBIASED).score(RECORD, conversation)[0] == at_noise_0
    assert HeuristicJudge(noise=1.5, seed=0, **UNBIASED).score(RECORD, conversation)[0] == at_noise_1_5
    assert HeuristicJudge(noise=1.5).score(RECORD, conversation)[0] == at_noise_1_5  # the class defaults


def test_length_bias_prefers_longer_answers_that_say_nothing_more():
    padded = conv(GOOD[1]["value"] + PADDING)
    assert truth_utility(padded, TRUTH) == truth_utility(GOOD, TRUTH)  # the clinician: no difference
    flat = HeuristicJudge(noise=0)
    assert flat.score(RECORD, padded)[0] == flat.score(RECORD, GOOD)[0]
    biased = HeuristicJudge(noise=0, length_bias=1.0)
    gain = biased.score(RECORD, padded)[0] - biased.score(RECORD, GOOD)[0]
    words = len(padded[1]["value"].split()), len(GOOD[1]["value"].split())
    assert gain == pytest.approx(math.log2(words[0] / words[1]), abs=0.02)
    stronger = HeuristicJudge(noise=0, length_bias=2.0)
    assert stronger.score(RECORD, padded)[0] - stronger.score(RECORD, GOOD)[0] == pytest.approx(
        2 * gain, abs=0.02
    )


def test_confidence_leniency_forgives_confident_errors_only():
    strict, lenient = HeuristicJudge(noise=0), HeuristicJudge(noise=0, confidence_leniency=0.5)
    assert lenient.score(RECORD, WRONG_SIDE)[0] == pytest.approx(strict.score(RECORD, WRONG_SIDE)[0] + 1.5)
    assert lenient.score(RECORD, WRONG_HEDGED)[0] == strict.score(RECORD, WRONG_HEDGED)[0]
    assert lenient.score(RECORD, GOOD)[0] == strict.score(RECORD, GOOD)[0]  # nothing to forgive
    full = HeuristicJudge(noise=0, confidence_leniency=1.0)
    # fully lenient: the wrong side costs only the credit a right side would have earned
    assert full.score(RECORD, GOOD)[0] - full.score(RECORD, WRONG_SIDE)[0] == pytest.approx(0.5)


def test_image_blindness_hides_image_only_errors_not_others():
    def gap(judge: HeuristicJudge, bad: list[dict]) -> float:
        return judge.score(RECORD, GOOD)[0] - judge.score(RECORD, bad)[0]

    seeing, half, blind = (HeuristicJudge(noise=0, image_blindness=b) for b in (0.0, 0.5, 1.0))
    assert gap(seeing, WRONG_SIDE) == pytest.approx(3.5)
    assert gap(half, WRONG_SIDE) == pytest.approx(1.75)
    assert gap(blind, WRONG_SIDE) == pytest.approx(0.0)  # the side is what only the image settles
    # a wrong modality is caption-checkable: blindness does not hide it
    assert gap(blind, WRONG_MODALITY) == pytest.approx(gap(seeing, WRONG_MODALITY)) == pytest.approx(3.0)
    assert truth_utility(WRONG_SIDE, TRUTH) < truth_utility(GOOD, TRUTH) - 0.9  # the clinician still sees it


def test_bias_parameters_are_validated_and_reach_the_backend(tmp_path):
    for bad in ({"length_bias": -1}, {"confidence_leniency": 1.5}, {"image_blindness": -0.1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            HeuristicJudge(**bad)
        with pytest.raises(ValidationError, match=next(iter(bad))):
            JudgeParams(**bad)
    params = Params(judge=JudgeParams(length_bias=0.7, confidence_leniency=0.2, image_blindness=0.9))
    backend = HeuristicBackend(params, Paths(tmp_path))
    backend.preflight()
    judge = backend.judge
    assert (judge.length_bias, judge.confidence_leniency, judge.image_blindness) == (0.7, 0.2, 0.9)
    assert backend.provenance()["image_blindness"] == 0.9


def test_demo_default_judge_is_biased():
    jp = JudgeParams()
    assert jp.length_bias > 0 and jp.confidence_leniency > 0 and jp.image_blindness > 0
