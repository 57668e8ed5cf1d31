"""The typed artifact readers: one rule per problem, one drop name, wherever an artifact is read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vital.artifacts.candidates import CandidateFile, candidate_refs, read_candidates
from vital.artifacts.labels import read_labels
from vital.artifacts.sample import read_sample
from vital.artifacts.scores import judge_scores, read_judgments, read_scores
from vital.drops import Drops
from vital.io import RecordError


def _figure(pid: str) -> dict:
    return {"pair_id": pid, "fig_caption": f"CT {pid}.", "image": f"images/{pid}.png"}


def _candidate(cid: str, answer: bool = True) -> dict:
    turns = [{"from": "human", "value": "<image>\nSide?"}] + (
        [{"from": "gpt", "value": "Left."}] if answer else []
    )
    return {
        "id": cid,
        "pair_id": cid.split("#")[0],
        "image": "images/x.png",
        "domain": "ct_scan",
        "conversations": turns,
    }


def _write(path: Path, lines: list) -> Path:
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8"
    )
    return path


def _reasons(drops: Drops) -> dict[str, str]:
    return {e["reason"]: e["where"] for e in drops.examples}


def test_sample_drops_bad_lines_and_repeated_figures_with_file_and_line(tmp_path):
    path = _write(
        tmp_path / "sample.jsonl", [_figure("A"), "{not json", {"pair_id": "B"}, _figure("A"), _figure("C")]
    )
    drops = Drops()
    assert list(read_sample(path, drops)) == ["A", "C"]
    assert drops.counts == {"bad_line": 2, "duplicate_figure": 1}
    assert [e["where"] for e in drops.examples] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    assert "not valid JSON" in drops.examples[0]["detail"] and "fig_caption" in drops.examples[1]["detail"]


def test_candidates_one_rule_per_problem(tmp_path):
    lines = [
        _candidate("A#0"),
        _candidate("A#0"),  # a second record of the id
        _candidate("Z#0"),  # its figure is not in the sample
        _candidate("A#1", answer=False),  # no answer
        {"id": "A#2"},  # not a candidate
        "\xff garbage",
        _candidate("A#3"),
    ]
    path = _write(tmp_path / "candidates.jsonl", lines)
    drops = Drops()
    got = read_candidates(path, drops, {"A": object()})
    assert [c.id for c in got] == ["A#0", "A#3"]
    assert drops.counts == {
        "duplicate_candidate": 1,
        "figure_not_in_sample": 1,
        "no_answer": 1,
        "bad_line": 2,
    }
    assert _reasons(drops)["figure_not_in_sample"] == f"{path}:3"
    # without the sample, a foreign figure is not a problem; the other rules stay
    drops = Drops()
    assert [c.id for c in read_candidates(path, drops)] == ["A#0", "Z#0", "A#3"]
    assert "figure_not_in_sample" not in drops.counts


def test_candidate_refs_read_back_the_same_candidates(tmp_path):
    path = _write(tmp_path / "candidates.jsonl", ["", _candidate("A#0"), "{", _candidate("A#1")])
    drops = Drops()
    refs = candidate_refs(path, drops)
    source = CandidateFile(path)
    try:
        assert [source.get(r) for r in refs] == read_candidates(path, Drops())
    finally:
        source.close()
    assert drops.counts == {"bad_line": 1}


def test_empty_and_missing_files_fail_on_one_line_naming_the_file(tmp_path):
    for name, read in [
        ("sample.jsonl", read_sample),
        ("candidates.jsonl", read_candidates),
        ("scores.jsonl", read_scores),
        ("judgments.jsonl", read_judgments),
    ]:
        path = tmp_path / name
        with pytest.raises(FileNotFoundError, match=rf"{name}: not found \(run the \w+ stage first"):
            read(path, Drops())
        _write(path, ["{broken"])
        with pytest.raises(RecordError, match=rf"{name}: no usable .*{name}:1: bad_line") as err:
            read(path, Drops())
        assert "\n" not in str(err.value)
    # no clinician labels is not fatal: the pairs are then the judge's alone
    assert read_labels(_write(tmp_path / "labels.jsonl", []), Drops()) == []


def test_scores_drop_bad_lines_and_keep_the_first_score(tmp_path):
    lines = [
        {"candidate_id": "A#0", "score": 1.5},
        {"candidate_id": "A#0", "score": 9},
        {"candidate_id": "A#1", "score": True},
        {"candidate_id": 3, "score": 1},
        {"candidate_id": "A#2", "score": float("nan")},
        [1, 2],
        {"candidate_id": "A#3", "score": 2},
    ]
    path = _write(tmp_path / "scores.jsonl", [json.dumps(x) for x in lines])
    drops = Drops()
    assert read_scores(path, drops) == {"A#0": 1.5, "A#3": 2.0}
    assert drops.counts == {"duplicate_score": 1, "bad_line": 4}


def test_scores_by_weight_name_the_missing_head(tmp_path):
    path = _write(
        tmp_path / "scores_by_weight.jsonl",
        [
            {"candidate_id": "A#0", "scores": {"0": 0.5, "400": 1.0}},
            {"candidate_id": "A#1", "scores": {"400": 2}},
        ],
    )
    drops = Drops()
    assert read_scores(path, drops, field="scores", key="0") == {"A#0": 0.5}
    assert drops.examples[0]["detail"] == "no scores['0'] (has ['400'])"


def test_judgments_and_labels(tmp_path):
    judgments = _write(
        tmp_path / "judgments.jsonl",
        [
            {"candidate_id": "A#0", "pair_id": "A", "score": 7},
            {"candidate_id": "A#0", "pair_id": "A", "score": 2},
            {"candidate_id": "A#1", "pair_id": "A", "score": 11},  # outside the rubric's 0-10
            {"candidate_id": "B#0", "pair_id": "B", "score": 3},
        ],
    )
    drops = Drops()
    assert judge_scores(judgments, drops) == {"A#0": 7.0, "B#0": 3.0}
    assert drops.counts == {"duplicate_judgment": 1, "bad_line": 1}
    known = {"A#0": "A", "A#1": "A", "B#0": "B"}
    labels = _write(
        tmp_path / "labels.jsonl",
        [
            {"pair_id": "A", "annotator": "c1", "ranking": ["A#0", "A#1"]},
            {"pair_id": "A", "annotator": "c1", "ranking": ["A#0", "A#9"]},
            {"pair_id": "A", "annotator": "c1", "ranking": ["A#0", "B#0"]},
            {"pair_id": "A", "annotator": "c1", "ranking": ["A#0", "A#0"]},
            {"pair_id": "A", "annotator": "c1", "ranking": ["A#0"]},
        ],
    )
    drops = Drops()
    assert [p.ranking for p in read_labels(labels, drops, known)] == [["A#0", "A#1"]]
    assert drops.counts == {
        "label_unknown_candidate": 1,
        "label_candidate_of_other_figure": 1,
        "label_repeats_candidate": 1,
        "bad_line": 1,
    }
