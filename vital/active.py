"""Simulated active labelling: held-out clinician agreement against the number of clinician-labelled figures.

Start from the judge's pairs only; reveal the clinician rankings already in hand (the labels stage's
human training pairs) figure by figure in a chosen order; retrain the rating head on the frozen features
after each batch; measure agreement with the held-out clinician pairs. Orders: ``random`` (a seeded
shuffle, the baseline), and the orders ``vital annotate --order`` serves (``uncertain``, ``disagree``;
:mod:`vital.annotate.order`) computed from the judge-only selector of the same seed, as a clinician would
get them from that selector's ``artifacts/scores.jsonl``.

Early stopping uses the validation figures' judge pairs only, so no clinician label reaches a head except
through the revealed training figures; the residual rater (``judge_input="residual"``) validates on the
validation figures' clinician pairs as well (on the judge's own pairs the judge alone can never be beaten),
so its curve starts from those figures' labels too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from vital.annotate.order import disagreement, ranked, uncertainty
from vital.io import RecordError
from vital.params import SelectorParams
from vital.schema import Pair
from vital.selector.data import to_pairset
from vital.selector.evidence import agreement
from vital.selector.model import FrozenFeatureRater, RatingHead
from vital.selector.stacking import JudgeResidualRater, judge_tensor, train_on_judge
from vital.selector.train import rate_all, train_rater

ACTIVE_ORDERS = ("random", "uncertain", "disagree")


def reveal_order(
    order: str,
    pool: Sequence[str],
    seed: int,
    figures: Mapping[str, Sequence[str]],
    selector: Mapping[str, float],
    judge: Mapping[str, float],
) -> list[str]:
    """The pool's figures in the order their clinician labels are revealed."""
    if order == "random":
        return [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
    if order == "uncertain":
        return ranked(pool, uncertainty(selector, figures), descending=False)
    if order == "disagree":
        return ranked(pool, disagreement(selector, judge, figures), descending=True)
    raise ValueError(f"order={order!r}: expected one of {', '.join(ACTIVE_ORDERS)}")


def label_curve(
    x: torch.Tensor,
    candidate_ids: Sequence[str],
    figure_of: Sequence[str],
    by_split: Mapping[str, list[Pair]],
    judge: Mapping[str, float],
    sp: SelectorParams,
    sizes: Sequence[int],
    orders: Sequence[str] = ACTIVE_ORDERS,
    seeds: Sequence[int] = (0, 1, 2),
    human_weight: float = 10.0,
    judge_input: str = "none",
) -> list[dict[str, Any]]:
    """One row per (order, seed, labelled figures): held-out clinician agreement of a head trained on the
    judge's training pairs plus the clinician pairs of the first ``n`` revealed figures.

    ``x`` holds the head's features of ``candidate_ids`` (``figure_of`` their figures); ``by_split`` the
    pairs stage's pairs by split. A seed sets the head's initialisation and batch order and the random
    order's shuffle; sizes beyond the pool are cut to it. ``judge_input="residual"`` trains the select
    stage's residual rater (``a * judge + head``, kept as the judge unless validation says otherwise) instead
    of a head on features alone.
    """
    bad = [o for o in orders if o not in ACTIVE_ORDERS]
    if bad:
        raise ValueError(f"orders {bad}: expected some of {', '.join(ACTIVE_ORDERS)}")
    index = {c: i for i, c in enumerate(candidate_ids)}
    figures: dict[str, list[str]] = defaultdict(list)
    for c, f in zip(candidate_ids, figure_of, strict=True):
        figures[f].append(c)
    train = by_split.get("train", [])
    judge_pairs = [p for p in train if p.source == "model"]
    human: dict[str, list[Pair]] = defaultdict(list)
    for p in train:
        if p.source == "human":
            human[p.pair_id].append(p)
    pool = sorted(human)
    # A residual rater keeps the judge unless an epoch beats it on validation, and on the judge's own pairs
    # nothing can: it validates on the validation figures' clinician pairs too, as the select stage does.
    val = [p for p in by_split.get("val", []) if p.source == "model" or judge_input == "residual"]
    held = [p for p in by_split.get("heldout", []) if p.source == "human"]
    if not judge_pairs or not pool or not held:
        raise RecordError(
            f"active labelling needs judge training pairs ({len(judge_pairs)}), clinician-labelled training "
            f"figures ({len(pool)}) and held-out clinician pairs ({len(held)})"
        )
    counts = sorted({min(n, len(pool)) for n in sizes} | {0})
    if judge_input not in ("none", "residual"):
        raise ValueError(f"judge_input={judge_input!r}: expected none or residual")
    on_judge = (
        judge_tensor(list(candidate_ids), dict(judge), "judge scores") if judge_input == "residual" else None
    )

    def fit(revealed: Sequence[str], seed: int) -> dict[str, float]:
        s = sp.model_copy(update={"seed": seed, "human_weight": human_weight, "finetune_backbone": "none"})
        pairs = judge_pairs + [p for f in revealed for p in human[f]]
        torch.manual_seed(seed)
        rater = FrozenFeatureRater(RatingHead(x.shape[1], s.hidden, s.dropout), x)
        trainer = train_rater
        if judge_input == "residual":
            rater, trainer = JudgeResidualRater(rater, on_judge), train_on_judge
        res = trainer(
            rater,
            to_pairset(pairs, index, human_weight),
            to_pairset(val, index, human_weight),
            s,
            desc=f"active n={len(revealed)} seed={seed}",
        )
        return dict(zip(candidate_ids, rate_all(res.rater).tolist(), strict=True))

    rows = []
    for seed in seeds:
        base = fit([], seed)
        full = fit(pool, seed) if counts[-1] == len(pool) else None
        for order in orders:
            seq = reveal_order(order, pool, seed, figures, base, judge)
            for n in counts:
                scores = base if n == 0 else full if n == len(pool) else fit(seq[:n], seed)
                rows.append(
                    {
                        "order": order,
                        "seed": seed,
                        "labelled_figures": n,
                        "human_pairs": sum(len(human[f]) for f in seq[:n]),
                        "heldout_agreement": round(agreement(scores, held), 4),
                    }
                )
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds, per (order, labelled figures)."""
    groups: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in rows:
        groups[(r["order"], r["labelled_figures"])].append(r["heldout_agreement"])
    return [
        {
            "order": o,
            "labelled_figures": n,
            "seeds": len(v),
            "mean": round(float(np.mean(v)), 4),
            "std": round(float(np.std(v)), 4),
            "min": min(v),
            "max": max(v),
        }
        for (o, n), v in sorted(groups.items())
    ]
