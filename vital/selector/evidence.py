"""Evidence statistics: how well a rater orders preference pairs, against chance, the judge and clinicians."""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import Any

import numpy as np

from vital.schema import Pair, Preference


def agreement(score: dict[str, float], pairs: list[Pair]) -> float | None:
    """Fraction of pairs the rater orders like the pair (ties count one half)."""
    if not pairs:
        return None
    hits = [
        1.0 if score[p.winner] > score[p.loser] else 0.5 if score[p.winner] == score[p.loser] else 0.0
        for p in pairs
    ]
    return float(np.mean(hits))


def pooled_auc(score: dict[str, float], pairs: list[Pair]) -> float | None:
    """AUC of winners' vs losers' scores pooled over all pairs (as BioMed-VITAL reports it)."""
    if not pairs:
        return None
    pos = np.array([score[p.winner] for p in pairs])
    neg = np.array([score[p.loser] for p in pairs])
    allv = np.concatenate([pos, neg])
    ranks = _average_ranks(allv)
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def _average_ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    sv = v[order]
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def kendall_tau(rater: list[float], truth_rank: list[int]) -> float:
    """Tau-b-free simple tau: (concordant - discordant) / pairs, rater ties count 0."""
    c = d = 0
    for i, j in combinations(range(len(rater)), 2):
        s = (rater[i] - rater[j]) * (truth_rank[j] - truth_rank[i])  # rank 0 = best
        c += s > 0
        d += s < 0
    n = len(rater) * (len(rater) - 1) / 2
    return (c - d) / n


def mean_kendall(score: dict[str, float], prefs: list[Preference]) -> dict[str, Any]:
    long = [p for p in prefs if len(p.ranking) > 2 and all(c in score for c in p.ranking)]
    if not long:
        return {"kendall_tau": None, "rankings": 0}
    taus = [kendall_tau([score[c] for c in p.ranking], list(range(len(p.ranking)))) for p in long]
    return {"kendall_tau": round(float(np.mean(taus)), 4), "rankings": len(long)}


def rater_report(score: dict[str, float], pairs: list[Pair], prefs: list[Preference]) -> dict[str, Any]:
    agr, auc = agreement(score, pairs), pooled_auc(score, pairs)
    return {
        "agreement": None if agr is None else round(agr, 4),
        "auc": None if auc is None else round(auc, 4),
        **mean_kendall(score, prefs),
    }


def random_rater(ids: list[str], pairs: list[Pair], seed: int, draws: int = 200) -> dict[str, Any]:
    """Agreement of random ratings: mean and spread over seeded draws (the noise floor of this eval set)."""
    if not pairs:
        return {"agreement": None, "agreement_std": None, "draws": 0}
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        s = dict(zip(ids, rng.random(len(ids)).tolist(), strict=True))
        values.append(agreement(s, pairs))
    return {
        "agreement": round(float(np.mean(values)), 4),
        "agreement_std": round(float(np.std(values)), 4),
        "draws": draws,
    }


def bootstrap_gap(
    a: dict[str, float], b: dict[str, float], pairs: list[Pair], seed: int, n: int = 1000
) -> dict[str, Any] | None:
    """Agreement(a) - agreement(b) with a 95% interval from resampling figures (pairs of a figure move together)."""
    if not pairs:
        return None
    by_fig: dict[str, list[Pair]] = defaultdict(list)
    for p in pairs:
        by_fig[p.pair_id].append(p)
    figs = list(by_fig)

    def hits(s: dict[str, float], ps: list[Pair]) -> np.ndarray:
        return np.array(
            [1.0 if s[p.winner] > s[p.loser] else 0.5 if s[p.winner] == s[p.loser] else 0.0 for p in ps]
        )

    diff = {f: hits(a, by_fig[f]) - hits(b, by_fig[f]) for f in figs}
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n):
        pick = rng.integers(0, len(figs), len(figs))
        vals = np.concatenate([diff[figs[i]] for i in pick])
        stats.append(vals.mean())
    point = float(np.concatenate(list(diff.values())).mean())
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return {
        "difference": round(point, 4),
        "ci95": [round(float(lo), 4), round(float(hi), 4)],
        "figures": len(figs),
    }


def clinician_agreement(prefs: list[Preference], figures: set[str] | None = None) -> dict[str, Any]:
    """How often two clinicians order the same two candidates alike (the ceiling for any rater)."""
    by_fig: dict[str, dict[str, list[str]]] = defaultdict(dict)
    for p in prefs:
        if figures is None or p.pair_id in figures:
            by_fig[p.pair_id][p.annotator] = p.ranking
    same = total = 0
    for rankings in by_fig.values():
        for ra, rb in combinations(rankings.values(), 2):
            pa, pb = {c: i for i, c in enumerate(ra)}, {c: i for i, c in enumerate(rb)}
            for x, y in combinations([c for c in ra if c in pb], 2):
                total += 1
                same += (pa[x] < pa[y]) == (pb[x] < pb[y])
    return {"agreement": round(same / total, 4) if total else None, "compared_pairs": total}


def heldout_evidence(
    selector: dict[str, float],
    judge: dict[str, float],
    ids: list[str],
    held: list[Pair],
    prefs: list[Preference],
    seed: int,
) -> dict[str, Any]:
    """The held-out evidence of the select stage's metrics: the selector against the judge, chance and
    clinicians, on held-out clinician pairs and on held-out model pairs."""
    human = [p for p in held if p.source == "human"]
    model = [p for p in held if p.source == "model"]
    held_figs = {p.pair_id for p in human}
    held_prefs = [p for p in prefs if p.pair_id in held_figs]
    judged_human = [p for p in human if p.winner in judge and p.loser in judge]
    return {
        "heldout_human": {
            "pairs": len(human),
            "figures": len(held_figs),
            "selector": rater_report(selector, human, held_prefs),
            "judge": rater_report(judge, judged_human, held_prefs),
            "random": random_rater(ids, human, seed),
            "selector_minus_judge": bootstrap_gap(selector, judge, judged_human, seed),
            "clinician_vs_clinician": clinician_agreement(held_prefs),
        },
        "heldout_model": {
            "pairs": len(model),
            "figures": len({p.pair_id for p in model}),
            "selector": rater_report(selector, model, []),
            "judge": {"agreement": 1.0 if model else None, "note": "model pairs are made from judge scores"},
            "random": random_rater(ids, model, seed),
        },
        "clinician_vs_clinician_all": clinician_agreement(prefs),
    }
