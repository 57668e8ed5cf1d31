"""The hallucination rate of free-text answers, each claim checked against the figure's hidden truth."""

from __future__ import annotations

from pathlib import Path

import pytest

from vital.io import RecordError, read_jsonl
from vital.params import WorldParams
from vital.vqa.hallucination import DESCRIBE_PROMPT, hallucination_of, hallucination_rate
from vital.world import build_world, vqa_truth

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


# ---------------------------------------------------------------- asked of a model, on the world's figures
class Describer:
    """Stands in for a model asked to describe figures: a fixed text per figure (nothing to the rest)."""

    model_id = "scripted"

    def __init__(self, texts: dict[str, str]):
        self.texts = texts
        self.asked: list = []

    def answer(self, items, batch_size, max_new_tokens, desc):
        self.asked.extend(items)
        return [self.texts.get(item.extra.get("pair_id"), "") for item in items]  # VQA questions: ""


def test_a_model_is_asked_to_describe_each_figure_and_its_claims_are_checked(tmp_path):
    model = Describer(
        {
            "L": "The image is a CT scan. There is a single small lesion in the right half.",  # side wrong
            "N": "The image is an MRI. There is no visible lesion.",
        }
    )
    truth = {k: {**v, "image": f"images/{k}.png"} for k, v in TRUTH.items()}
    rates, rows = hallucination_of(model, truth, tmp_path, batch_size=4, max_new_tokens=48)
    assert [i.question for i in model.asked] == [DESCRIBE_PROMPT] * 2
    assert [i.image_path for i in model.asked] == [tmp_path / "images/L.png", tmp_path / "images/N.png"]
    # L: modality, lesion, count, side, size = 5 checked, 1 wrong; N: modality, lesion = 2, 0 wrong
    assert (rates["claims_checked"], rates["claims_wrong"]) == (7, 1)
    assert rates["answer_rate"] == 0.5 and rates["wrong_share_by_finding"]["side"] == 1.0
    assert rows[0] == {
        "pair_id": "L",
        "text": model.texts["L"],
        "claims": {"modality": "ct", "lesion": True, "count": 1, "side": "right", "size": "small"},
    }


def test_the_vqa_figures_truth_is_replayed_from_the_world_params(tmp_path):
    cfg = WorldParams(figures=10, vqa_figures=12, vqa_train_figures=3)
    build_world(tmp_path, cfg)
    for split, name in (("test", "questions.jsonl"), ("train", "train.jsonl")):
        truth = vqa_truth(cfg, split)
        questions = list(read_jsonl(tmp_path / "vqa" / "demo" / name))
        assert {q["question_id"].rsplit("_q", 1)[0] for q in questions} == set(truth)
        for q in questions:
            t = truth[q["question_id"].rsplit("_q", 1)[0]]
            assert q["image"] == t["image"] and (tmp_path / "vqa" / "demo" / t["image"]).is_file()
            if q["answer_type"] == "OPEN":
                expected = {"modality": t["modality"], "side": t["side"], "size": t["size"]}
                assert q["answer"] == expected.get(q["kind"], str(t["count"]))
            elif q["kind"] == "presence":
                has = q["question"] == "Is there a lesion in this image?"
                assert q["answer"] == ("yes" if t["lesion"] == has else "no")


def test_the_evaluate_stage_reports_hallucination_beside_vqa_and_none_turns_it_off(tmp_path):
    from tests.test_evaluate import _fake_checkpoints, write_demo_set
    from vital.evaluate import run
    from vital.params import parse_params
    from vital.paths import Paths

    write_demo_set(tmp_path)
    _fake_checkpoints(tmp_path)
    cfg = {
        "world": {"vqa_figures": 6},
        "tune": {"subsets": ["top"], "seeds": [0]},
        "chat_eval": {"compare": ["top-s0", "base"]},
    }
    truth = vqa_truth(parse_params(cfg).world)
    right = {
        k: f"There is no visible lesion. This is {'an MRI' if t['modality'] == 'mri' else 'a scan'}."
        if not t["lesion"]
        else f"There is a lesion on the {t['side']} side."
        for k, t in truth.items()
    }
    wrong = {k: "There is a lesion on the left side." if not t["lesion"] or t["side"] == "right"
             else "There is a lesion on the right side." for k, t in truth.items()}  # fmt: skip

    def factory(model):
        return Describer(right if Path(str(model)).name == "top-s0" else wrong)

    with pytest.raises(RecordError, match=r"evaluate.hallucination=world: .*vqa_00000.png \(and 5 more"):
        run(parse_params(cfg), Paths(tmp_path), answerer=factory)  # the world's figures are not there
    for t in truth.values():  # the describer never opens them: their presence is what is checked
        (tmp_path / "data/vqa/demo" / t["image"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data/vqa/demo" / t["image"]).write_bytes(b"")
    out = run(parse_params(cfg), Paths(tmp_path), answerer=factory)
    h = out["_hallucination"]
    assert h["top-s0"]["claim_rate"] == 0.0 and h["base"]["claim_rate"] > 0.3
    assert h["top-s0"]["answers"] == 6
    assert h["top_over_seeds"]["claim_rate"]["mean"] == 0.0
    rows = list(read_jsonl(tmp_path / "artifacts/predictions/base/hallucination.jsonl"))
    assert [r["text"] for r in rows] == [wrong[k] for k in sorted(truth)]

    off = run(parse_params({**cfg, "evaluate": {"hallucination": "none"}}), Paths(tmp_path), answerer=factory)
    assert "_hallucination" not in off
