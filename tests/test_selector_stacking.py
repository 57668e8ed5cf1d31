"""selector.judge_input=residual: the selector starts as the judge, learns only what clinician pairs add,
and reports selector - judge over seeds with an interval."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_selector import synthetic

from vital.io import read_jsonl
from vital.params import SelectorParams
from vital.paths import Paths
from vital.schema import Pair
from vital.selector import load_selector, run
from vital.selector.data import PairSet
from vital.selector.model import FrozenFeatureRater, RatingHead
from vital.selector.stacking import JudgeResidualRater, gap_over_seeds, judge_tensor, train_on_judge
from vital.selector.train import rate_all

torch.set_num_threads(1)
FAST = dict(epochs=30, patience=10, lr=3e-3, hidden=32, compare_weights=[])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Paths:
    return synthetic(tmp_path_factory.mktemp("stack"), figures=300)


def _judge(paths: Paths) -> dict[str, float]:
    return {j["candidate_id"]: j["score"] for j in read_jsonl(paths.judgments)}


def test_untrained_residual_rater_is_the_judge():
    judge = torch.tensor([3.0, 7.5, 1.0, 9.0])
    rater = JudgeResidualRater(FrozenFeatureRater(RatingHead(8, 16, 0.1), torch.randn(4, 8)), judge)
    assert torch.equal(rate_all(rater), judge)
    assert {n for n, _ in rater.head.named_parameters()} >= {"judge_weight"}  # the weight trains too


def test_keeps_the_judge_when_no_epoch_beats_it_on_validation():
    # validation pairs ordered exactly as the judge orders them: nothing can beat the judge there
    judge = torch.arange(40, dtype=torch.float32)
    x = torch.randn(40, 8)
    rater = JudgeResidualRater(FrozenFeatureRater(RatingHead(8, 16, 0.0), x), judge)

    def pairset(pairs: list[tuple[int, int]]) -> PairSet:
        return PairSet(
            winner=torch.tensor([w for w, _ in pairs]),
            loser=torch.tensor([lo for _, lo in pairs]),
            weight=torch.ones(len(pairs)),
            source=["human"] * len(pairs),
            pair_id=[str(w) for w, _ in pairs],
        )

    train = pairset([(i, i + 1) for i in range(0, 30, 2)])  # clinicians "disagree" with the judge in training
    val = pairset([(i + 1, i) for i in range(30, 39)])
    result = train_on_judge(rater, train, val, SelectorParams(epochs=5, patience=5, lr=1e-2))
    assert result.best_epoch == 0 and len(result.curve) >= 1
    assert torch.equal(rate_all(result.rater), judge)


def test_residual_selector_beats_the_judge_where_clinicians_know_more(world: Paths):
    m = run(SelectorParams(human_weight=50, seed_repeats=3, **FAST), world)
    h = m["heldout_human"]
    assert m["judge_input"] == "residual" and "judge_weight" in m
    assert h["selector"]["agreement"] > h["judge"]["agreement"] + 0.05
    seeds = h["selector_minus_judge_over_seeds"]
    assert seeds["seeds"] == [0, 1, 2] and len(seeds["difference_by_seed"]) == 3
    assert seeds["ci95"][0] > 0 and seeds["ci95"][0] <= seeds["difference_mean"] <= seeds["ci95"][1]
    assert seeds["difference_by_seed"]["0"] == h["selector_minus_judge"]["difference"]
    # the saved selector rebuilds the written scores: judge_weight * judge + head(features)
    head, cfg = load_selector(world.selector)
    assert cfg["judge_weight"] == m["judge_weight"]
    written = {r["candidate_id"]: r["score"] for r in read_jsonl(world.scores)}
    assert len(written) == 1200
    # every seed's head scores every candidate for the bakeoff; seed 0's is scores.jsonl
    by_seed = [r["scores_by_seed"] for r in read_jsonl(world.scores_by_weight)]
    assert len(by_seed) == 1200 and set(by_seed[0]) == {"0", "1", "2"}
    assert [s["0"] for s in by_seed] == list(written.values())
    assert [s["1"] for s in by_seed] != [s["0"] for s in by_seed]


def test_the_weight0_head_is_compared_over_the_same_seeds(world: Paths):
    m = run(SelectorParams(human_weight=50, seed_repeats=3, **{**FAST, "compare_weights": [0]}), world)
    h = m["heldout_human"]
    gap = h["selector_minus_weight0_over_seeds"]
    assert gap["seeds"] == [0, 1, 2] and gap["ci95"][0] <= gap["difference_mean"] <= gap["ci95"][1]
    assert gap["difference_by_seed"]["0"] == h["selector_minus_weight0"]["difference"]
    rows = list(read_jsonl(world.scores_by_weight))
    assert set(rows[0]["weight0_by_seed"]) == {"0", "1", "2"}
    assert [r["weight0_by_seed"]["0"] for r in rows] == [r["scores"]["0"] for r in rows]


def test_without_judge_input_the_metrics_say_none(world: Paths):
    m = run(SelectorParams(human_weight=50, judge_input="none", seed_repeats=1, **FAST), world)
    assert m["judge_input"] == "none" and "judge_weight" not in m
    assert m["heldout_human"]["selector_minus_judge_over_seeds"]["seeds"] == [0]


def test_gap_over_seeds_by_hand():
    pairs = [
        Pair(pair_id=f"F{i}", winner=f"a{i}", loser=f"b{i}", source="human", split="heldout")
        for i in range(4)
    ]
    judge = {**{f"a{i}": 1.0 for i in range(4)}, **{f"b{i}": 0.0 for i in range(2)}, "b2": 2.0, "b3": 2.0}
    right = {**{f"a{i}": 1.0 for i in range(4)}, **{f"b{i}": 0.0 for i in range(4)}}  # all 4 right
    half = {**right, "b3": 5.0}  # 3 of 4 right
    g = gap_over_seeds({0: right, 1: half}, judge, pairs, seed=0)
    # judge: 2 of 4 right; seeds: +0.5 and +0.25; mean +0.375
    assert g["difference_by_seed"] == {"0": 0.5, "1": 0.25}
    assert g["difference_mean"] == 0.375 and g["figures"] == 4
    assert 0 <= g["ci95"][0] <= 0.375 <= g["ci95"][1] <= 1
    assert gap_over_seeds({0: right}, {}, pairs, seed=0) is None


def test_judge_tensor_fills_unscored_with_the_mean_and_fails_when_nothing_is_scored(tmp_path: Path):
    t = judge_tensor(["a", "b", "c"], {"a": 2.0, "c": 4.0}, "j.jsonl")
    assert t.tolist() == [2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="j.jsonl: no judge score"):
        judge_tensor(["a"], {}, "j.jsonl")
