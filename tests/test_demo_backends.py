"""Offline demo backends: claim extraction, template generator, heuristic judge, simulated clinician."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from vital.demo.claims import agreement, extract_claims, style_flags
from vital.demo.heuristic_judge import HeuristicJudge
from vital.demo.simulated_clinician import SimulatedClinician, is_accurate, truth_utility
from vital.demo.template_generator import TemplateGenerator
from vital.io import read_jsonl
from vital.params import WorldParams
from vital.schema import Candidate, FigureRecord
from vital.world import build_world, load_truth

TRUTH = {"lesion": True, "side": "left", "count": 2, "size": "small", "modality": "ct"}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[list[FigureRecord], dict[str, dict]]:
    out: Path = tmp_path_factory.mktemp("world")
    build_world(out, WorldParams(figures=150, vqa_figures=5))
    records = [FigureRecord.model_validate(r) for r in read_jsonl(out / "corpus" / "figures.jsonl")]
    return records, load_truth(out / "corpus" / "truth.jsonl")


def _candidates(record: FigureRecord, convs: list[list[dict]]) -> list[Candidate]:
    return [
        Candidate(
            id=f"{record.pair_id}#{k}",
            pair_id=record.pair_id,
            image=record.image,
            domain="x",
            conversations=c,
        )
        for k, c in enumerate(convs)
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "There are two small hypodense lesions in the left half of the image.",
            {"lesion": True, "count": 2, "side": "left", "size": "small"},
        ),
        ("No focal lesion is seen; the abdomen is unremarkable.", {"lesion": False}),
        ("This is an axial CT (computed tomography) scan.", {"modality": "ct"}),
        (
            "Brain MRI showing multiple large hyperintense lesions.",
            {"modality": "mri", "lesion": True, "count": "multiple", "size": "large"},
        ),
        ("A nodule on the left and another on the right.", {"lesion": True, "side": "both"}),
        ("Chest X-ray and CT of the same patient.", {"modality": "mixed"}),
        ("There may be some abnormality.", {}),
    ],
)
def test_extract_claims(text, expected):
    assert extract_claims(text) == expected


def test_agreement():
    assert agreement({"lesion": True, "side": "left", "count": 2, "modality": "ct"}, TRUTH) == 1.0
    assert agreement({"lesion": True, "side": "right", "count": 2, "modality": "ct"}, TRUTH) == 0.75
    assert agreement({"count": "multiple"}, TRUTH) == 1.0
    assert agreement({"lesion": False}, TRUTH) == 0.0
    assert agreement({}, TRUTH) == 0.5  # nothing checkable
    assert agreement({"side": "left"}, {"modality": "ct"}) == 0.5  # caption silent about the side
    normal = {"lesion": False, "side": None, "count": 0, "size": None, "modality": "ct"}
    assert agreement({"lesion": True, "side": "left"}, normal) == 0.0  # hallucinated finding


def test_style_flags():
    conv = [
        {"from": "human", "value": "<image>\nWhat is shown?"},
        {"from": "gpt", "value": "As described in the caption, there may be a lesion on the left"},
    ]
    flags = style_flags(conv)
    assert flags["hedges"] == 1 and flags["leaks"] >= 1 and flags["truncated"] and flags["rounds"] == 1


def test_generator_shape_and_determinism(world):
    records, truth = world
    gen = TemplateGenerator(truth, seed=0)
    for rec in records[:20]:
        convs = gen.generate(rec, 4)
        assert len(convs) == 4
        for conv in convs:
            assert 2 <= len(conv) <= 6 and len(conv) % 2 == 0
            assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
            assert conv[0]["value"].startswith("<image>\n")
            assert all("<image>" not in t["value"] for t in conv[1:])
            text = " ".join(t["value"] for t in conv).lower()
            assert not any(w in text for w in ("hallucinat", "accurate", "truncated", "leaky"))
        assert convs == TemplateGenerator(truth, seed=0).generate(rec, 4)
    # a figure's candidates do not depend on which other figures the generator knows
    only = TemplateGenerator({records[0].pair_id: truth[records[0].pair_id]}, seed=0)
    assert only.generate(records[0], 4) == gen.generate(records[0], 4)
    assert TemplateGenerator(truth, seed=1).generate(records[0], 4) != gen.generate(records[0], 4)


def test_generator_rounds_range(world):
    records, truth = world
    gen = TemplateGenerator(truth, seed=0, min_rounds=6, max_rounds=8)
    lengths = set()
    for rec in records[:30]:
        for conv in gen.generate(rec, 4):
            questions = [t["value"].removeprefix("<image>\n") for t in conv if t["from"] == "human"]
            lengths.add(len(questions))
            assert len(set(questions)) == len(questions)  # never the same question twice
    assert lengths == {6, 7, 8}
    # figures without a lesion have 21 distinct questions (modality 9, findings 8, describe 4): a longer
    # minimum is refused up front
    TemplateGenerator(truth, min_rounds=21, max_rounds=21)
    with pytest.raises(ValueError, match="min_rounds 22 exceeds the 21 distinct"):
        TemplateGenerator(truth, min_rounds=22, max_rounds=22)
    with pytest.raises(ValueError, match="min_rounds"):
        TemplateGenerator(truth, min_rounds=4, max_rounds=3)


def test_generator_quality_mix(world):
    records, truth = world
    gen = TemplateGenerator(truth)
    convs = [(c, truth[r.pair_id]) for r in records for c in gen.generate(r, 4)]
    accurate = sum(is_accurate(c, t) for c, t in convs) / len(convs)
    assert 0.38 <= accurate <= 0.62
    flags = [style_flags(c) for c, _ in convs]
    assert sum(f["hedges"] > 0 for f in flags) > 0.04 * len(convs)
    assert sum(f["leaks"] > 0 for f in flags) > 0.04 * len(convs)
    assert sum(f["truncated"] for f in flags) > 0.04 * len(convs)
    wrong = sum(
        agreement(extract_claims(" ".join(t["value"] for t in c if t["from"] == "gpt")), t) < 1
        for c, t in convs
    )
    assert wrong > 0.12 * len(convs)


def test_generator_unknown_figure_is_clear(world):
    records, _ = world
    with pytest.raises(KeyError, match=records[0].pair_id):
        TemplateGenerator({}).generate(records[0], 1)


def test_judge_is_deterministic_bounded_and_truth_blind(world):
    records, truth = world
    judge = HeuristicJudge(noise=1.5, seed=0)
    rec = records[0]
    for conv in TemplateGenerator(truth).generate(rec, 4):
        score, why = judge.score(rec, conv)
        assert 0 <= score <= 10 and why
        assert (score, why) == HeuristicJudge(noise=1.5, seed=0).score(rec, conv)
    with pytest.raises(ValueError, match="noise"):
        HeuristicJudge(noise=-1)


def test_judge_checks_caption_facts():
    rec = FigureRecord(
        pair_id="P1_F1",
        pmid="1",
        fig_caption="Axial CT scan showing a single small hypodense "
        "lesion in the left half of the image (arrow).",
        image="images/ct_scan/P1_F1.png",
    )
    vague = rec.model_copy(update={"fig_caption": "Axial CT scan (see text for details)."})

    def conv(answer: str) -> list[dict]:
        return [{"from": "human", "value": "<image>\nWhere is the lesion?"}, {"from": "gpt", "value": answer}]

    good = conv("There is a single small hypodense lesion in the left half of the image.")
    wrong = conv("There is a single small hypodense lesion in the right half of the image.")
    judge = HeuristicJudge(noise=0)
    assert judge.score(rec, good)[0] > judge.score(rec, wrong)[0] + 2
    assert judge.score(vague, good)[0] == judge.score(vague, wrong)[0]  # caption silent: cannot tell
    assert judge.score(rec, good)[0] > judge.score(rec, conv("There may be some abnormality."))[0]


def _pairwise(records, truth, score) -> float:
    gen = TemplateGenerator(truth)
    right = total = 0
    for rec in records:
        convs = gen.generate(rec, 4)
        util = [truth_utility(c, truth[rec.pair_id]) for c in convs]
        scores = score(rec, convs)
        for a, b in itertools.combinations(range(4), 2):
            if abs(util[a] - util[b]) > 1e-9 and scores[a] != scores[b]:
                total += 1
                right += (scores[a] > scores[b]) == (util[a] > util[b])
    return right / total


def test_clinician_beats_judge_and_judge_beats_chance(world):
    records, truth = world
    judge = HeuristicJudge(noise=1.5)
    clinician = SimulatedClinician(truth, "c1", error_rate=0.05)

    def judge_scores(rec, convs):
        return [judge.score(rec, c)[0] for c in convs]

    def clinician_scores(rec, convs):
        ranking = clinician.rank(rec, _candidates(rec, convs))
        return [-ranking.index(f"{rec.pair_id}#{k}") for k in range(len(convs))]

    judge_acc = _pairwise(records, truth, judge_scores)
    clin_acc = _pairwise(records, truth, clinician_scores)
    assert 0.65 < judge_acc < clin_acc - 0.08, (judge_acc, clin_acc)
    assert clin_acc > 0.9


def test_clinician_ranks_by_truth_and_slips_per_annotator(world):
    records, truth = world
    gen = TemplateGenerator(truth)
    perfect = SimulatedClinician(truth, "c1", error_rate=0.0)
    disagreements = 0
    for rec in records[:60]:
        cands = _candidates(rec, gen.generate(rec, 4))
        ranking, ties = perfect.rank_with_ties(rec, cands)
        util = {
            c.id: truth_utility([t.model_dump(by_alias=True) for t in c.conversations], truth[rec.pair_id])
            for c in cands
        }
        assert [util[c] for c in ranking] == sorted(util.values(), reverse=True)
        assert all(len({round(util[c], 6) for c in g}) == 1 for g in ties)
        a = SimulatedClinician(truth, "a", error_rate=0.5).rank(rec, cands)
        b = SimulatedClinician(truth, "b", error_rate=0.5).rank(rec, cands)
        assert a == SimulatedClinician(truth, "a", error_rate=0.5).rank(rec, cands)
        disagreements += a != b
    assert disagreements > 5
    with pytest.raises(ValueError, match="2 candidates"):
        perfect.rank(records[0], _candidates(records[0], gen.generate(records[0], 1)))


def test_audit_reports_the_world_quality(tmp_path):
    from vital.demo.audit import audit

    build_world(tmp_path, WorldParams(figures=40, vqa_figures=5))
    report = audit(tmp_path)
    assert report["figures"] == 40 and report["candidates"] == 160
    assert 0.3 < report["accurate_fraction"] < 0.7
    assert report["judge"]["rate"] < report["clinician"]["rate"]
    assert report["clinician_vs_clinician"]["pairs"] == report["clinician"]["pairs"] > 0
