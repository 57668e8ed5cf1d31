"""Pairs: model pairs from judge-score gaps, human pairs from rankings, figure-level splits, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vital.io import write_jsonl
from vital.pairs import ranking_pairs, run
from vital.params import PairsParams
from vital.paths import Paths
from vital.schema import Preference


def write_world(
    root: Path, figures: int = 40, k: int = 4, labelled: int = 20, labels: list | None = None
) -> Paths:
    paths = Paths(root)
    judgments = []
    for f in range(figures):
        for c in range(k):
            score = [9.0, 6.0, 6.0, 2.0][c % 4]  # candidates 1 and 2 tie: never a model pair
            judgments.append({"candidate_id": f"F{f}#{c}", "pair_id": f"F{f}", "score": score})
    write_jsonl(paths.judgments, judgments)
    if labels is None:
        labels = [
            {"pair_id": f"F{f}", "annotator": "clinician_1", "ranking": [f"F{f}#1", f"F{f}#0", f"F{f}#3"]}
            for f in range(labelled)
        ]
    write_jsonl(paths.labels, labels)
    return paths


def test_model_and_human_pairs_split_by_figure(tmp_path: Path):
    paths = write_world(tmp_path)
    m = run(PairsParams(model_pairs_per_figure=10, min_score_gap=0.5, heldout_fraction=0.3), paths)
    pairs = [json.loads(line) for line in paths.pairs.read_text().splitlines()]
    model = [p for p in pairs if p["source"] == "model"]
    human = [p for p in pairs if p["source"] == "human"]
    assert len(model) == 40 * 5  # 6 combinations, one equal-score pair never made
    assert m["equal_score_pairs"] == 40
    assert len(human) == 20 * 3  # a ranking of 3 gives 3 pairs
    assert all(p["winner"].split("#")[1] != "2" or p["loser"].split("#")[1] != "1" for p in model)
    split_of: dict[str, set[str]] = {}
    for p in pairs:
        split_of.setdefault(p["pair_id"], set()).add(p["split"])
    assert all(len(s) == 1 for s in split_of.values()), "a figure sits on two sides of a split"
    held = {f for f, s in split_of.items() if "heldout" in s}
    assert len(held) == 6 and held <= {f"F{f}" for f in range(20)}  # 30% of the 20 labelled figures
    assert m["by_source_split"]["model_heldout"] == 6 * 5  # the judge's pairs on unseen figures


def test_sampling_is_seeded_and_capped(tmp_path: Path):
    paths = write_world(tmp_path)
    run(PairsParams(model_pairs_per_figure=2, seed=3), paths)
    first = paths.pairs.read_text()
    run(PairsParams(model_pairs_per_figure=2, seed=3), paths)
    assert paths.pairs.read_text() == first
    model = [json.loads(x) for x in first.splitlines() if '"model"' in x]
    assert len(model) == 80
    run(PairsParams(model_pairs_per_figure=2, seed=4), paths)
    assert paths.pairs.read_text() != first


def test_ties_in_rankings():
    pref = Preference(pair_id="F", annotator="a", ranking=["F#0", "F#1", "F#2"], ties=[["F#1", "F#2"]])
    pairs, tied = ranking_pairs(pref)
    assert pairs == [("F#0", "F#1"), ("F#0", "F#2")] and tied == 1


def test_bad_labels_are_counted_not_fatal(tmp_path: Path):
    labels = [
        {"pair_id": "F0", "annotator": "c1", "ranking": ["F0#0", "F0#9"]},  # unknown candidate
        {"pair_id": "F0", "annotator": "c1", "ranking": ["F0#0", "F1#1"]},  # other figure's candidate
        {"pair_id": "F0", "annotator": "c1", "ranking": ["F0#0"]},  # not a comparison
        {"pair_id": "F2", "annotator": "c1", "ranking": ["F2#0", "F2#3"]},
    ]
    paths = write_world(tmp_path, labels=labels)
    m = run(PairsParams(), paths)
    assert m["dropped_by_reason"] == {
        "bad_line": 1,
        "label_candidate_of_other_figure": 1,
        "label_unknown_candidate": 1,
    }
    unknown = next(e for e in m["dropped_examples"] if e["reason"] == "label_unknown_candidate")
    assert "F0#9" in unknown["detail"] and unknown["where"].startswith(f"{paths.labels}:")
    assert m["labels_used"] == 1


def test_empty_label_file_warns(tmp_path: Path):
    paths = write_world(tmp_path, labels=[])
    m = run(PairsParams(), paths)
    assert "no usable clinician labels" in m["warnings"][0]
    assert m["human_labelled_figures"] == 0 and "human_train" not in m["by_source_split"]


def test_missing_judgments_names_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="judgments.jsonl"):
        run(PairsParams(), Paths(tmp_path))


def test_paper_pairing_samples_cross_figure_pairs_at_the_configured_count(tmp_path: Path):
    paths = write_world(tmp_path)
    pp = PairsParams(model_pairing="paper", model_pairs=500, heldout_fraction=0.3, val_fraction=0.15)
    m = run(pp, paths)
    pairs = [json.loads(line) for line in paths.pairs.read_text().splitlines()]
    model = [p for p in pairs if p["source"] == "model"]
    train = [p for p in model if p["split"] == "train"]
    assert len(train) == 500
    figure = {f"F{f}#{c}": f"F{f}" for f in range(40) for c in range(4)}
    cross = [p for p in model if figure[p["winner"]] != figure[p["loser"]]]
    assert len(cross) > 0.9 * len(model)  # within-figure pairing could never make one
    assert m["cross_figure_model_pairs"] == len(cross) and m["model_pairing"] == "paper"
    score = {f"F{f}#{c}": [9.0, 6.0, 6.0, 2.0][c] for f in range(40) for c in range(4)}
    assert all(score[p["winner"]] > score[p["loser"]] for p in model)  # two different levels, higher wins
    split_of = {}
    for p in pairs:
        split_of.setdefault(figure[p["winner"]], set()).add(p["split"])
        split_of.setdefault(figure[p["loser"]], set()).add(p["split"])
    assert all(len(s) == 1 for s in split_of.values()), "a pair crosses a figure split"
    n_fig = m["figures_by_split"]
    assert m["by_source_split"]["model_val"] == round(500 * n_fig["val"] / n_fig["train"])
    assert m["by_source_split"]["model_heldout"] == round(500 * n_fig["heldout"] / n_fig["train"])
    run(pp, paths)
    assert [json.loads(line) for line in paths.pairs.read_text().splitlines()] == pairs  # seeded


def test_paper_pairing_levels_are_whole_points_and_single_candidate_levels_are_never_drawn(tmp_path: Path):
    paths = Paths(tmp_path)
    scores = {"A#0": 8.2, "B#0": 7.9, "C#0": 3.1, "D#0": 2.8, "E#0": 5.0}  # levels 8, 3 and a lone 5
    write_jsonl(
        paths.judgments, [{"candidate_id": c, "pair_id": c[0], "score": s} for c, s in scores.items()]
    )
    write_jsonl(paths.labels, [])
    run(PairsParams(model_pairing="paper", model_pairs=50, heldout_fraction=0, val_fraction=0), paths)
    model = [json.loads(line) for line in paths.pairs.read_text().splitlines()]
    assert len(model) == 50
    assert {p["winner"] for p in model} <= {"A#0", "B#0"} and {p["loser"] for p in model} <= {"C#0", "D#0"}
