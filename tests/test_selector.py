"""Selector: learns a preference from features, weights human pairs, scores everything, reports evidence."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vital.embed.store import save_embeddings
from vital.embed.text import candidate_text
from vital.io import write_jsonl
from vital.pairs import run as make_pairs
from vital.params import PairsParams, ParamsError, SelectorParams
from vital.paths import Paths
from vital.schema import Candidate, FigureRecord, Pair, Preference, Turn
from vital.selector import (
    agreement,
    best_weight,
    clinician_agreement,
    kendall_tau,
    load_selector,
    pair_loss,
    pooled_auc,
    run,
)
from vital.selector.features import check_paper_inputs, paper_features
from vital.selector.model import RatingHead

torch.set_num_threads(1)


def synthetic(root: Path, figures: int = 120, k: int = 4, dim: int = 16, seed: int = 0) -> Paths:
    """Candidates whose true quality is a direction in text-feature space; the judge sees a different,
    noisier mix of it and of a nuisance direction; clinicians see the truth."""
    rng = np.random.default_rng(seed)
    paths = Paths(root)
    img = rng.normal(size=(figures, dim)).astype(np.float32)
    text = rng.normal(size=(figures * k, dim)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)  # the head sees L2-normalised features
    truth = text[:, 0]
    judge = 0.5 * truth + 1.0 * text[:, 1] + rng.normal(scale=0.1, size=len(truth))
    ids = [f"F{f}#{c}" for f in range(figures) for c in range(k)]
    save_embeddings(
        paths.embeddings,
        [f"F{f}" for f in range(figures)],
        img,
        ids,
        np.repeat(np.arange(figures), k),
        text,
        {"backbone": "synthetic", "fingerprint": "x"},
    )
    jscore = np.clip(5 + 8 * judge, 0, 10).round(2)
    write_jsonl(
        paths.judgments,
        [
            {"candidate_id": c, "pair_id": c.split("#")[0], "score": float(s)}
            for c, s in zip(ids, jscore, strict=True)
        ],
    )
    labels = []
    for f in range(0, figures, 2):  # half the figures get a full clinician ranking
        cs = [f"F{f}#{c}" for c in range(k)]
        ranking = sorted(cs, key=lambda c: -truth[ids.index(c)])
        labels.append({"pair_id": f"F{f}", "annotator": "c1", "ranking": ranking})
        if f % 10 == 0:
            labels.append({"pair_id": f"F{f}", "annotator": "c2", "ranking": ranking[:2][::-1] + ranking[2:]})
    write_jsonl(paths.labels, labels)
    make_pairs(PairsParams(model_pairs_per_figure=6, min_score_gap=0.5, heldout_fraction=0.3), paths)
    return paths


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Paths:
    # 300 figures: with fewer, the validation split is so small that early stopping can latch onto a
    # lucky first epoch for some seeds
    return synthetic(tmp_path_factory.mktemp("sel"), figures=300)


def test_human_pairs_beat_judge_and_weight_zero(world: Paths):
    m = run(
        SelectorParams(human_weight=50, epochs=60, patience=15, lr=3e-3, hidden=32, compare_weights=[0]),
        world,
    )
    h = m["heldout_human"]
    assert h["pairs"] > 50
    assert h["selector"]["agreement"] > h["judge"]["agreement"] + 0.1
    assert h["selector"]["agreement"] > m["heldout_human_agreement_by_weight"]["0"] + 0.05
    assert abs(h["random"]["agreement"] - 0.5) < 0.05
    gap0 = h["selector_minus_weight0"]
    assert gap0["figures"] > 0 and gap0["ci95"][0] <= gap0["difference"] <= gap0["ci95"][1]
    assert h["selector"]["rankings"] > 0 and h["selector"]["kendall_tau"] > 0.3
    assert m["clinician_vs_clinician_all"]["compared_pairs"] > 0
    # every candidate scored, the model and curves saved
    scores = [json.loads(x) for x in world.scores.read_text().splitlines()]
    assert len(scores) == 1200 and {"candidate_id", "pair_id", "score"} <= set(scores[0])
    # every trained head's scores by weight: the configured head's equal scores.jsonl (the bakeoff reads "0")
    by_weight = [json.loads(x) for x in world.scores_by_weight.read_text().splitlines()]
    assert [r["candidate_id"] for r in by_weight] == [r["candidate_id"] for r in scores]
    assert set(by_weight[0]["scores"]) == {"0", "50"}
    assert [r["scores"]["50"] for r in by_weight] == [r["score"] for r in scores]
    assert [r["scores"]["0"] for r in by_weight] != [r["score"] for r in scores]
    head, cfg = load_selector(world.selector)
    assert cfg["in_dim"] == 64 and cfg["params"]["human_weight"] == 50
    curve = (world.plots / "select_curve.csv").read_text().splitlines()
    assert curve[0] == "epoch,train_loss,val_agreement" and len(curve) == m["epochs_run"] + 1
    assert (world.plots / "select_weights.csv").read_text().splitlines()[1].startswith("0,")


def test_auto_weight_is_the_best_on_validation_clinicians_and_equals_that_fixed_run(world: Paths):
    kw = dict(epochs=30, patience=10, lr=3e-3, hidden=32, compare_weights=[0])
    m = run(SelectorParams(human_weight="auto", auto_weights=[0, 50, 5], **kw), world)
    by_val = m["human_weight_auto"]["val_human_agreement_by_weight"]
    assert set(by_val) == {"0", "50", "5"}
    chosen = m["human_weight_auto"]["chosen"]
    assert m["human_weight"] == chosen and by_val[f"{chosen:g}"] == max(by_val.values())
    assert chosen > 0  # clinicians see the truth, the judge a noisy mix: weight 0 cannot win
    assert set(m["heldout_human_agreement_by_weight"]) == {"0", "50", "5"}  # every tried head, held out
    heads = [json.loads(x)["scores"] for x in world.scores_by_weight.read_text().splitlines()]
    assert set(heads[0]) == {"0", "50", "5"}
    assert "selector_minus_weight0" in m["heldout_human"]
    auto_scores = world.scores.read_text()
    fixed = run(SelectorParams(human_weight=chosen, **kw), world)
    assert world.scores.read_text() == auto_scores  # the chosen head is the one a fixed run trains
    assert fixed["heldout_human"]["selector"] == m["heldout_human"]["selector"]
    assert load_selector(world.selector)[1]["params"]["human_weight"] == chosen


def test_auto_weight_ties_on_agreement_go_to_the_auc_then_to_the_first_listed():
    # the committed demo's case: four weights tie on validation agreement
    by_val = {0.0: (0.778, 0.741), 1.0: (0.778, 0.752), 10.0: (0.767, 0.9), 400.0: (0.778, 0.752)}
    assert best_weight(by_val) == 1.0
    assert best_weight({5.0: (0.7, 0.7), 0.0: (0.7, 0.7)}) == 5.0
    assert best_weight({0.0: (0.7, 0.9), 1.0: (0.71, 0.5)}) == 1.0  # agreement comes first


def test_auto_weight_without_validation_clinician_pairs_is_a_clear_error(tmp_path: Path):
    paths = synthetic(tmp_path, figures=40)
    pairs = [json.loads(x) for x in paths.pairs.read_text().splitlines()]
    write_jsonl(paths.pairs, [p for p in pairs if not (p["source"] == "human" and p["split"] == "val")])
    with pytest.raises(ValueError, match="human_weight=auto .* has none"):
        run(SelectorParams(human_weight="auto", epochs=2), paths)


def test_weight_zero_learns_the_judge(world: Paths):
    m = run(
        SelectorParams(
            human_weight=0, loss="logistic", epochs=40, patience=10, hidden=32, compare_weights=[]
        ),
        world,
    )
    assert m["pairs_train"]["human"] > 0  # present but weight 0
    assert m["heldout_model"]["selector"]["agreement"] > 0.75


def test_losses():
    d = torch.tensor([-1.0, 0.0, 0.5, 3.0])
    assert torch.allclose(pair_loss(d, "hinge", 1.0), torch.tensor([2.0, 1.0, 0.5, 0.0]))
    bt = pair_loss(d, "logistic", 1.0)
    assert torch.allclose(bt, -torch.log(torch.sigmoid(d))) and bool((bt > 0).all())


def test_metrics_helpers():
    s = {"a": 3.0, "b": 2.0, "c": 1.0, "d": 1.0}
    pairs = [
        Pair(winner="a", loser="b", pair_id="F", source="human", split="heldout"),
        Pair(winner="d", loser="c", pair_id="F", source="human", split="heldout"),
    ]
    assert agreement(s, pairs) == 0.75  # a tie counts one half
    assert pooled_auc(s, pairs[:1]) == 1.0
    assert kendall_tau([3, 2, 1], [0, 1, 2]) == 1.0 and kendall_tau([1, 2, 3], [0, 1, 2]) == -1.0
    prefs = [
        Preference(pair_id="F", annotator="x", ranking=["a", "b", "c"]),
        Preference(pair_id="F", annotator="y", ranking=["b", "a", "c"]),
    ]
    assert clinician_agreement(prefs) == {"agreement": round(2 / 3, 4), "compared_pairs": 3}


def test_missing_embeddings_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="run the embed stage"):
        run(SelectorParams(), Paths(tmp_path))


def test_head_features_add_signed_side_terms():
    from vital.selector import head_features

    img, txt, ctx = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    base = head_features(img, txt, ctx)
    side_t, side_i = torch.randn(3, 4), torch.tensor([[1.0], [-1.0], [0.0]])
    full = head_features(img, txt, ctx, text_side=side_t, image_side=side_i)
    assert full.shape[1] == base.shape[1] + 4 + 4 + 1
    signed = full[:, base.shape[1] + 4 : base.shape[1] + 8]
    assert torch.allclose(signed[0], side_t[0]) and torch.allclose(signed[1], -side_t[1])
    assert torch.all(signed[2] == 0)
    # one side input alone is ignored (both are written by the same embed run)
    assert head_features(img, txt, ctx, text_side=side_t).shape == base.shape


def test_invalid_and_featureless_pairs_are_counted_with_file_and_line(tmp_path: Path):
    paths = synthetic(tmp_path, figures=40)
    n = len(paths.pairs.read_text().splitlines())
    with paths.pairs.open("a") as f:
        f.write(json.dumps({"winner": "F0#0"}) + "\n")
        f.write(
            json.dumps({**json.loads(paths.pairs.read_text().splitlines()[0]), "winner": "ghost#0"}) + "\n"
        )
    m = run(SelectorParams(human_weight=1, epochs=1, compare_weights=[]), paths)
    assert m["dropped"] == 2 and m["dropped_by_reason"] == {"bad_line": 1, "pair_without_features": 1}
    first, second = m["dropped_examples"]
    assert (first["reason"], first["where"]) == ("bad_line", f"{paths.pairs}:{n + 1}")
    assert second == {
        "where": f"{paths.pairs}:{n + 2}",
        "reason": "pair_without_features",
        "detail": "['ghost#0']",
    }


@pytest.mark.parametrize("context", [False, True])
@pytest.mark.parametrize("rounds", [False, True])
@pytest.mark.parametrize("side", [False, True])
def test_feature_names_list_every_column_block_of_head_features(context: bool, rounds: bool, side: bool):
    """The names the config records and the features the head sees come from one table: every name is
    one block of columns (D wide; the round similarities 2, the image side 1), in order."""
    from vital.selector.features import feature_terms, head_features

    d, n = 5, 3
    ctx = torch.randn(n, d) if context else None
    mx = torch.randn(n, d) if rounds else None
    sims = torch.randn(n, 4) if rounds else None
    t_side, i_side = (torch.randn(n, d), torch.randn(n, 1)) if side else (None, None)
    x = head_features(torch.randn(n, d), torch.randn(n, d), ctx, mx, sims, t_side, i_side)
    names = feature_terms(context, rounds, rounds, side)
    width = {"min/mean cos(round, img)": 2, "min/mean cos(round, ctx)": 2, "img_side": 1}
    assert x.shape == (n, sum(width.get(name, d) for name in names))
    if rounds:  # the round similarities stand, whole and in order, where the names put them
        at = sum(width.get(name, d) for name in names[: names.index("min/mean cos(round, img)")])
        assert torch.equal(x[:, at : at + 4], sims)


def test_human_share_of_pair_weight_is_recorded_and_can_set_the_weight(world: Paths):
    kw = dict(epochs=2, hidden=16, compare_weights=[])
    m = run(SelectorParams(human_weight=50, **kw), world)
    n_human, n_model = m["pairs_train"]["human"], m["pairs_train"]["model"]
    assert m["human_share_of_weight"] == round(50 * n_human / (50 * n_human + n_model), 4)
    m = run(SelectorParams(human_share=0.4, **kw), world)
    assert m["human_share_of_weight"] == 0.4 and m["human_weight_from_share"] == 0.4
    assert m["human_weight"] == pytest.approx(0.4 / 0.6 * n_model / n_human)
    assert load_selector(world.selector)[1]["params"]["human_weight"] == pytest.approx(m["human_weight"])
    with pytest.raises(ValueError, match="leave human_weight at auto"):
        SelectorParams(human_weight=400, human_share=0.4)


def test_human_share_without_clinician_training_pairs_names_the_parameter(tmp_path: Path):
    paths = synthetic(tmp_path, figures=40)
    pairs = [json.loads(x) for x in paths.pairs.read_text().splitlines()]
    write_jsonl(paths.pairs, [p for p in pairs if not (p["source"] == "human" and p["split"] == "train")])
    with pytest.raises(ValueError, match=r"selector.human_share=0.4: .*pairs.jsonl has 0 clinician"):
        run(SelectorParams(human_share=0.4, epochs=1, compare_weights=[]), paths)


def test_paper_head_reads_text_and_image_side_by_side_through_three_relu_layers_and_a_sigmoid():
    head = RatingHead(1024, 512, 0.0, "paper")
    linears = [m for m in head.net if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [
        (1024, 512),
        (512, 512),
        (512, 512),
        (512, 1),
    ]
    assert sum(isinstance(m, torch.nn.ReLU) for m in head.net) == 3 and isinstance(
        head.net[-1], torch.nn.Sigmoid
    )
    out = head(torch.randn(5, 1024) * 10)
    assert bool(((out > 0) & (out < 1)).all())
    image, text = torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 2.0]])
    assert torch.equal(paper_features(image, text), torch.tensor([[0.0, 1.0, 0.6, 0.8]]))
    vital_head = RatingHead(8, 4, 0.1)  # vital's head keeps its layout (saved selectors load unchanged)
    assert [type(m).__name__ for m in vital_head.net] == [
        "Linear", "GELU", "Dropout", "Linear", "GELU", "Dropout", "Linear"
    ]  # fmt: skip


def test_paper_head_trains_every_epoch_without_early_stopping(world: Paths):
    sp = SelectorParams(
        head="paper", hidden=32, dropout=0.0, epochs=6, batch_size=64, early_stopping=False,
        human_weight=50, compare_weights=[], lr=1e-3, judge_input="none",
    )  # fmt: skip
    m = run(sp, world)
    assert m["epochs_run"] == 6 and m["best_epoch"] == 6 and not m["stopped_early"]
    head, cfg = load_selector(world.selector)
    assert cfg["head"] == "paper" and cfg["in_dim"] == 32 and "concat(txt, img)" in cfg["features"]
    scores = [json.loads(x)["score"] for x in world.scores.read_text().splitlines()]
    assert all(0 < s < 1 for s in scores)
    assert m["heldout_human"]["selector"]["agreement"] > 0.6  # it learns, though from a sigmoid hinge


def test_paper_head_on_rounds_features_names_the_embed_parameter():
    with pytest.raises(ParamsError, match="embed.text_mode=joint"):
        check_paper_inputs(SimpleNamespace(text_max=np.zeros((1, 2))))


def test_paper_pairing_and_share_reach_select(tmp_path: Path):
    paths = synthetic(tmp_path, figures=60)
    make_pairs(PairsParams(model_pairing="paper", model_pairs=3000, heldout_fraction=0.3), paths)
    m = run(SelectorParams(human_share=0.4, head="paper", epochs=1, compare_weights=[]), paths)
    assert m["pairs_train"]["model"] == 3000 and m["human_share_of_weight"] == 0.4


def test_candidate_text_first_round_is_the_references_text():
    fig = FigureRecord(pair_id="F", fig_caption="Axial CT.", in_text_mention=["Mass seen."], image="a.png")
    turns = [("human", "<image>\nWhere?"), ("gpt", "Left."), ("human", "Size?"), ("gpt", "2 cm.")]
    cand = Candidate(
        id="F#0", pair_id="F", image="a.png", domain="ct_scan",
        conversations=[Turn(**{"from": f, "value": v}) for f, v in turns],
    )  # fmt: skip
    assert (
        candidate_text(fig, cand, "paper", "first") == "Axial CT. Mass seen. Question: Where? Answer: Left."
    )
    assert candidate_text(fig, cand).endswith("Question: Size? Answer: 2 cm.")
