"""The select stage: ``models/selector``, ``artifacts/scores.jsonl``, ``metrics/select.json`` and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vital.drops import Drops
from vital.embed.store import load_embeddings
from vital.io import RecordError, write_csv, write_json, write_jsonl
from vital.params import MlflowParams, Params, ParamsError, SelectorParams
from vital.paths import Paths
from vital.schema import Pair
from vital.selector.backbone import save_backbone
from vital.selector.data import PairSet, read_pairs, read_prefs, read_scores_of_judge, to_pairset
from vital.selector.evidence import agreement, bootstrap_gap, heldout_evidence, pooled_auc
from vital.selector.features import embedding_features, feature_names
from vital.selector.stacking import (
    JudgeResidualRater,
    gap_over_seeds,
    judge_tensor,
    saved_head,
    train_on_judge,
)
from vital.selector.store import CONFIG, save_selector
from vital.selector.train import TrainResult, new_rater, rate_all, train_rater


def best_weight(by_val: dict[float, tuple[float, float]]) -> float:
    """The weight whose head has the best (agreement, pooled AUC) on validation clinician pairs; the first
    listed among exact equals."""
    return max(by_val, key=by_val.__getitem__)


def _human_agreement(rater: torch.nn.Module, ids: list[str], held: list[Pair]) -> float | None:
    s = dict(zip(ids, rate_all(rater).tolist(), strict=True))
    return agreement(s, [p for p in held if p.source == "human"])


def weight_for_share(share: float, train: list[Pair], pairs_path: Path) -> float:
    """The human pair weight that gives clinician pairs ``share`` of the total training pair weight."""
    n_human = sum(p.source == "human" for p in train)
    n_model = len(train) - n_human
    if share == 0:
        return 0.0
    if n_human == 0 or n_model == 0:
        raise RecordError(
            f"selector.human_share={share:g}: {pairs_path} has {n_human} clinician and {n_model} model "
            "training pairs; a share needs both (set selector.human_weight instead)"
        )
    return share / (1 - share) * n_model / n_human


def human_share_of_weight(train: PairSet) -> float | None:
    """What share of the total training pair weight the clinician pairs carry."""
    total = float(train.weight.sum())
    human = float(sum(w for w, s in zip(train.weight.tolist(), train.source, strict=True) if s == "human"))
    return None if total == 0 else round(human / total, 4)


def check_device(device: str) -> None:
    """Fail on ``selector.device`` before any loading or training, naming the parameter."""
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ParamsError(f"selector.device={device!r}: not a torch device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParamsError(f"selector.device={device!r}: no CUDA device on this machine (use cpu)")


def run(sp: SelectorParams, paths: Paths, mlflow: MlflowParams | None = None) -> dict[str, Any]:
    """The select stage: ``models/selector``, ``artifacts/scores.jsonl``, ``metrics/select.json``, curve;
    logs the selector to MLflow as ``mlflow`` (the params in force) says."""
    check_device(sp.device)
    emb = load_embeddings(paths.embeddings)
    index = emb.index()
    drops = Drops()
    by_split = read_pairs(paths.pairs, index, drops)
    if not by_split.get("train"):
        raise RecordError(f"{paths.pairs}: no training pairs with features")
    x = embedding_features(emb, sp.head)
    held = by_split.get("heldout", [])
    share = sp.human_share
    if share is not None:
        sp = sp.model_copy(update={"human_weight": weight_for_share(share, by_split["train"], paths.pairs)})
    judge = read_scores_of_judge(paths.judgments)
    on_judge = None
    if sp.judge_input == "residual":
        on_judge = judge_tensor(emb.candidate_ids, judge, str(paths.judgments)).to(sp.device)

    def build(alt: SelectorParams) -> torch.nn.Module:
        rater = new_rater(x, alt, emb, paths)
        return rater if on_judge is None else JudgeResidualRater(rater, on_judge)

    def fit(w: float, desc: str = "selector", seed: int | None = None) -> TrainResult:
        alt = sp.model_copy(update={"human_weight": w, "seed": sp.seed if seed is None else seed})
        train_w = to_pairset(by_split["train"], index, w)
        trainer = train_rater if on_judge is None else train_on_judge
        return trainer(build(alt), train_w, to_pairset(by_split.get("val", []), index, w), alt, desc=desc)

    auto: dict[str, Any] | None = None
    by_weight: dict[float, float | None] = {}  # held-out clinician agreement of a head per human weight
    weight0_scores: dict[str, float] | None = None
    heads: dict[float, list[float]] = {}  # every trained head's scores, by human weight (scores_by_weight)
    best: TrainResult | None = None
    if sp.human_weight == "auto":
        val_human = [p for p in by_split.get("val", []) if p.source == "human"]
        if not val_human:
            raise RecordError(
                f"selector.human_weight=auto picks the weight on validation clinician pairs, and {paths.pairs} "
                "has none (give the labels stage more figures, or set a number)"
            )
        # Agreement first; its ties (a few hundred validation pairs tie often) go to the pooled AUC on the
        # same pairs, which also counts how far apart the head puts winners and losers; then to the first.
        by_val: dict[float, tuple[float, float]] = {}
        for w in dict.fromkeys(sp.auto_weights):  # one head at a time: with a backbone each is a model copy
            res = fit(w, desc=f"selector w={w:g}")
            heads[w] = rate_all(res.rater).tolist()
            head_scores = dict(zip(emb.candidate_ids, heads[w], strict=True))
            by_val[w] = (agreement(head_scores, val_human) or 0.0, pooled_auc(head_scores, val_human) or 0.0)
            by_weight[w] = agreement(head_scores, [p for p in held if p.source == "human"])
            if w == 0:
                weight0_scores = head_scores
            if best is None or by_val[w] > max(v for k, v in by_val.items() if k != w):
                best = res  # strictly better only: among equals the first of auto_weights wins
            del res
        chosen = best_weight(by_val)
        auto = {
            "chosen": chosen,
            "val_human_agreement_by_weight": {f"{w:g}": round(a, 4) for w, (a, _) in by_val.items()},
            "val_human_auc_by_weight": {f"{w:g}": round(u, 4) for w, (_, u) in by_val.items()},
        }
        sp = sp.model_copy(update={"human_weight": chosen})
    train = to_pairset(by_split["train"], index, sp.human_weight)
    val = to_pairset(by_split.get("val", []), index, sp.human_weight)
    result = best or fit(sp.human_weight)
    scores = rate_all(result.rater).numpy()
    heads.setdefault(sp.human_weight, scores.tolist())
    selector_scores = dict(zip(emb.candidate_ids, scores.tolist(), strict=True))
    prefs = read_prefs(paths.labels)

    # the same head at other human weights, on the same features and pairs: agreement vs weight in one run
    by_weight[sp.human_weight] = _human_agreement(result.rater, emb.candidate_ids, held)
    for w in sp.compare_weights:
        if w in by_weight:
            continue
        res = fit(w, desc=f"selector w={w:g}")
        by_weight[w] = _human_agreement(res.rater, emb.candidate_ids, held)
        heads[w] = rate_all(res.rater).tolist()
        if w == 0:
            weight0_scores = dict(zip(emb.candidate_ids, heads[w], strict=True))
    if sp.human_weight == 0:
        weight0_scores = None  # the selector itself: no gap to report

    config = {
        "in_dim": int(x.shape[1]),
        "head": sp.head,
        "hidden": sp.hidden,
        "dropout": sp.dropout,
        "features": feature_names(emb, sp.head),
        "backbone": emb.meta.get("backbone"),
        "backbone_pretrained": emb.meta.get("pretrained"),
        "embeddings_fingerprint": emb.meta.get("fingerprint"),
        "params": sp.model_dump(),
        "best_epoch": result.best_epoch,
    }
    save_selector(paths.selector, saved_head(result.head, config), config)
    if sp.finetune_backbone != "none":
        # the residual rater wraps the end-to-end rater that owns the backbone
        config.update(save_backbone(paths.selector, getattr(result.rater, "inner", result.rater)))
        write_json(paths.selector / CONFIG, config)
    write_jsonl(
        paths.scores,
        (
            {"candidate_id": c, "pair_id": p, "score": round(float(s), 6)}
            for c, p, s in zip(emb.candidate_ids, emb.pair_ids, scores, strict=True)
        ),
    )
    _write_curve(paths.plots / "select_curve.csv", result.curve)
    _write_weights(paths.plots / "select_weights.csv", by_weight)
    metrics = {
        "human_weight": sp.human_weight,
        **({"human_weight_auto": auto} if auto else {}),
        **({"human_weight_from_share": share} if share is not None else {}),
        "human_share_of_weight": human_share_of_weight(train),
        "loss": sp.loss,
        "finetune_backbone": sp.finetune_backbone,
        "pairs_train": {"human": train.source.count("human"), "model": train.source.count("model")},
        "pairs_val": len(val),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.curve),
        "stopped_early": result.stopped_early,
        "final_train_loss": result.curve[-1]["train_loss"],
        "best_val_agreement": max(c["val_agreement"] for c in result.curve),
        **heldout_evidence(selector_scores, judge, emb.candidate_ids, held, prefs, sp.seed),
        "heldout_human_agreement_by_weight": {
            f"{w:g}": (None if a is None else round(a, 4)) for w, a in sorted(by_weight.items())
        },
        "candidates_scored": len(scores),
        **drops.metrics(),
    }
    if weight0_scores is not None:
        human_held = [p for p in held if p.source == "human"]
        metrics["heldout_human"]["selector_minus_weight0"] = bootstrap_gap(
            selector_scores, weight0_scores, human_held, sp.seed
        )
    human_held = [p for p in held if p.source == "human"]
    by_seed = {sp.seed: selector_scores}
    for k in range(1, sp.seed_repeats):
        res = fit(sp.human_weight, desc=f"selector seed {sp.seed + k}", seed=sp.seed + k)
        by_seed[sp.seed + k] = dict(zip(emb.candidate_ids, rate_all(res.rater).tolist(), strict=True))
    metrics["heldout_human"]["selector_minus_judge_over_seeds"] = gap_over_seeds(
        by_seed, judge, human_held, sp.seed
    )
    # the weight-0 head is compared too (select's evidence, the bakeoff's selector_w0): the same seeds
    weight0_by_seed = by_seed if sp.human_weight == 0 else None
    if weight0_scores is not None and sp.seed_repeats > 1:
        weight0_by_seed = {sp.seed: weight0_scores}
        for k in range(1, sp.seed_repeats):
            res = fit(0.0, desc=f"selector w=0 seed {sp.seed + k}", seed=sp.seed + k)
            weight0_by_seed[sp.seed + k] = dict(
                zip(emb.candidate_ids, rate_all(res.rater).tolist(), strict=True)
            )
        metrics["heldout_human"]["selector_minus_weight0_over_seeds"] = gap_over_seeds(
            by_seed, weight0_by_seed, human_held, sp.seed
        )
    write_scores_by_weight(
        paths.scores_by_weight, emb.candidate_ids, emb.pair_ids, heads, by_seed, weight0_by_seed
    )
    metrics["judge_input"] = sp.judge_input
    if "judge_weight" in config:
        metrics["judge_weight"] = config["judge_weight"]
    from vital.lineage import log_stage  # MLflow run + registered `vital-select` (in a pipeline repo)

    log_stage(
        "select",
        sp.model_dump(),
        metrics,
        {
            "embeddings": paths.embeddings,
            "pairs": paths.pairs,
            "judgments": paths.judgments,
            "labels": paths.labels,
        },
        paths.selector,
        paths.root,
        mlflow=mlflow,
    )
    return metrics


def write_scores_by_weight(
    path: Path,
    ids: list[str],
    pair_ids: list[str],
    heads: dict[float, list[float]],
    by_seed: dict[int, dict[str, float]] | None = None,
    weight0_by_seed: dict[int, dict[str, float]] | None = None,
) -> None:
    """``artifacts/scores_by_weight.jsonl``: every trained head's score of every candidate, keyed by its
    human weight (``scores``: ``"0"``, ``"400"``) and, for the chosen weight and for weight 0, by training
    seed (``scores_by_seed``, ``weight0_by_seed``: ``selector.seed`` .. ``+ seed_repeats - 1``), so that other
    consumers (the bakeoff's ``selector`` and ``selector_w0`` over seeds) need no retrain."""
    order = sorted(heads)

    def by(seeds: dict[int, dict[str, float]] | None, field: str, c: str) -> dict:
        return {field: {str(s): round(float(seeds[s][c]), 6) for s in sorted(seeds)}} if seeds else {}

    write_jsonl(
        path,
        (
            {
                "candidate_id": c,
                "pair_id": p,
                "scores": {f"{w:g}": round(float(heads[w][i]), 6) for w in order},
                **by(by_seed, "scores_by_seed", c),
                **by(weight0_by_seed, "weight0_by_seed", c),
            }
            for i, (c, p) in enumerate(zip(ids, pair_ids, strict=True))
        ),
    )


CURVE_COLUMNS = ["epoch", "train_loss", "val_agreement"]


def _write_curve(path: Path, curve: list[dict[str, float]]) -> None:
    write_csv(path, CURVE_COLUMNS, ([row[c] for c in CURVE_COLUMNS] for row in curve))


def _write_weights(path: Path, by_weight: dict[float, float | None]) -> None:
    rows = ((f"{k:g}", "" if v is None else round(v, 4)) for k, v in sorted(by_weight.items()))
    write_csv(path, ["human_weight", "heldout_human_agreement"], rows)


def run_stage(p: Params, paths: Paths) -> dict[str, Any]:
    return run(p.selector, paths, p.mlflow)


def headline(detail: dict) -> dict:
    """Held-out clinician agreement of the selector, and its gap over the judge alone with the 95% interval."""
    held = detail.get("heldout_human") or {}
    gap = held.get("selector_minus_judge_over_seeds") or held.get("selector_minus_judge") or {}
    low, high = (gap.get("ci95") or [None, None])[:2]
    return {
        "human_weight": detail.get("human_weight"),
        "heldout_agreement": (held.get("selector") or {}).get("agreement"),
        "minus_judge": gap.get("difference_mean", gap.get("difference")),
        "minus_judge_ci_low": low,
        "minus_judge_ci_high": high,
    }
