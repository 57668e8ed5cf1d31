"""Simulated active labelling (vital.active) on a tiny world where clinicians and the judge disagree."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
import torch

from vital.active import label_curve, reveal_order, summarise
from vital.io import RecordError
from vital.params import SelectorParams
from vital.schema import Pair


def _world(n_figures: int = 40, k: int = 3):
    """Candidates whose true quality is feature 0; the judge ranks by feature 1 (unrelated), clinicians by
    feature 0. Figures 0-9 are held out, 10-14 validation, the rest training (all clinician-labelled)."""
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(n_figures * k, 4)), dtype=torch.float32)
    ids = [f"F{f}#{c}" for f in range(n_figures) for c in range(k)]
    figs = [f"F{f}" for f in range(n_figures) for _ in range(k)]
    by_split: dict[str, list[Pair]] = {"train": [], "val": [], "heldout": []}
    for f in range(n_figures):
        split = "heldout" if f < 10 else "val" if f < 15 else "train"
        rows = range(f * k, f * k + k)
        for a, b in combinations(rows, 2):
            for source, col in (("human", 0), ("model", 1)):
                win, lose = (a, b) if x[a, col] > x[b, col] else (b, a)
                by_split[split].append(
                    Pair(winner=ids[win], loser=ids[lose], pair_id=f"F{f}", source=source, split=split)
                )
    judge = {c: float(x[i, 1]) for i, c in enumerate(ids)}
    return x, ids, figs, by_split, judge


def test_reveal_orders_have_known_answers():
    figures = {"a": ["a0", "a1"], "b": ["b0", "b1"], "c": ["c0", "c1"]}
    sel = {"a0": 0.0, "a1": 1.0, "b0": 0.0, "b1": 0.1, "c0": 0.0, "c1": 0.5}
    judge = {"a0": 1.0, "a1": 0.0, "b0": 0.0, "b1": 1.0, "c0": 0.0, "c1": 1.0}
    pool = ["a", "b", "c"]
    assert reveal_order("uncertain", pool, 0, figures, sel, judge) == ["b", "c", "a"]
    assert reveal_order("disagree", pool, 0, figures, sel, judge) == ["a", "b", "c"]
    shuffles = {tuple(reveal_order("random", pool, s, figures, sel, judge)) for s in range(10)}
    assert all(sorted(s) == pool for s in shuffles) and len(shuffles) > 1
    assert reveal_order("random", pool, 3, figures, sel, judge) == reveal_order(
        "random", pool, 3, figures, sel, judge
    )
    with pytest.raises(ValueError, match="order='best'"):
        reveal_order("best", pool, 0, figures, sel, judge)


def test_clinician_labels_revealed_in_rounds_pull_the_head_from_the_judge_to_the_clinicians():
    x, ids, figs, by_split, judge = _world()
    sp = SelectorParams(epochs=40, patience=40, hidden=16, dropout=0.0, lr=0.01)
    rows = label_curve(x, ids, figs, by_split, judge, sp, sizes=[5, 100], seeds=[0, 1], human_weight=100.0)
    assert {r["labelled_figures"] for r in rows} == {0, 5, 25}  # 100 is cut to the 25 training figures
    assert len(rows) == 3 * 2 * 3  # orders x seeds x sizes
    by = {(r["order"], r["seed"], r["labelled_figures"]): r for r in rows}
    for seed in (0, 1):
        start = {by[(o, seed, 0)]["heldout_agreement"] for o in ("random", "uncertain", "disagree")}
        assert len(start) == 1  # the judge-only round is the same head whatever the order
        assert (
            by[("random", seed, 25)]["human_pairs"] == 25 * 3 and by[("random", seed, 5)]["human_pairs"] == 15
        )
        # judge-only heads follow the judge (~chance on clinician pairs here); all labels: the clinicians
        assert (
            by[("random", seed, 0)]["heldout_agreement"]
            < 0.5
            < 0.8
            < by[("random", seed, 25)]["heldout_agreement"]
        )
    summary = {(s["order"], s["labelled_figures"]): s for s in summarise(rows)}
    assert summary[("random", 25)]["seeds"] == 2
    assert summary[("random", 25)]["min"] <= summary[("random", 25)]["mean"] <= summary[("random", 25)]["max"]

    no_held = {**by_split, "heldout": []}
    with pytest.raises(RecordError, match=r"held-out clinician pairs \(0\)"):
        label_curve(x, ids, figs, no_held, judge, sp, sizes=[5])
    with pytest.raises(ValueError, match="orders"):
        label_curve(x, ids, figs, by_split, judge, sp, sizes=[5], orders=["best"])


def test_the_residual_selector_on_a_judge_unrelated_to_clinicians_learns_them_from_labels():
    x, ids, figs, by_split, judge = _world()
    sp = SelectorParams(epochs=40, patience=40, hidden=16, dropout=0.0, lr=0.01)
    rows = label_curve(
        x, ids, figs, by_split, judge, sp, sizes=[25], orders=["random"], seeds=[0], human_weight=100.0,
        judge_input="residual",
    )  # fmt: skip
    by = {r["labelled_figures"]: r["heldout_agreement"] for r in rows}
    held = [p for p in by_split["heldout"] if p.source == "human"]
    judge_alone = sum(judge[p.winner] > judge[p.loser] for p in held) / len(held)
    assert by[0] < 0.6 and judge_alone < 0.6  # the judge (or near it): unrelated to the clinicians here
    assert (
        by[25] > by[0] + 0.2
    )  # every training figure's clinician pairs: a head on top of the judge learns them
    with pytest.raises(ValueError, match="judge_input='stacked'"):
        label_curve(x, ids, figs, by_split, judge, sp, sizes=[5], judge_input="stacked")
