"""Which figures a clinician ranks first: active-labelling orders over the selector's and judge's scores.

``sample`` keeps the sample order. ``uncertain`` serves first the figures whose candidates the selector
rates closest together (the smallest rating gap between any two of a figure's candidates, from
``artifacts/scores.jsonl``): where a clinician's ranking is most likely to change the selector's mind.
``disagree`` serves first the figures where the judge (``artifacts/judgments.jsonl``) and the selector
order the candidates most differently (1 - Kendall tau per figure). Ties keep sample order; figures the
scores do not cover (fewer than two scored candidates) come last, in sample order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from itertools import combinations
from pathlib import Path

from vital.artifacts import scores as artifact_scores
from vital.drops import Drops
from vital.io import RecordError

ORDERS = ("sample", "uncertain", "disagree")


class OrderError(ValueError):
    """An order that cannot be computed from the inputs; the message names the file, line or option."""


def rating_gap(scores: Sequence[float]) -> float:
    """The smallest absolute difference between any two ratings (inf for fewer than two)."""
    s = sorted(scores)
    return min((b - a for a, b in zip(s, s[1:], strict=False)), default=math.inf)


def tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall tau-a of two score lists over the same candidates: (concordant - discordant) / all pairs;
    a pair tied in either list counts as neither (0 for fewer than two candidates)."""
    if len(a) != len(b):
        raise ValueError(f"tau: {len(a)} scores against {len(b)}")
    n = len(a) * (len(a) - 1) / 2
    if n == 0:
        return 0.0
    s = sum(
        (x > 0) - (x < 0) for x in ((a[i] - a[j]) * (b[i] - b[j]) for i, j in combinations(range(len(a)), 2))
    )
    return s / n


def uncertainty(selector: Mapping[str, float], figures: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Figure -> smallest selector rating gap among its scored candidates (figures with < 2 left out)."""
    out = {}
    for pid, cands in figures.items():
        s = [selector[c] for c in cands if c in selector]
        if len(s) >= 2:
            out[pid] = rating_gap(s)
    return out


def disagreement(
    selector: Mapping[str, float], judge: Mapping[str, float], figures: Mapping[str, Sequence[str]]
) -> dict[str, float]:
    """Figure -> 1 - Kendall tau between judge and selector scores over the candidates both scored
    (0: same order, 2: reversed; figures with < 2 such candidates left out)."""
    out = {}
    for pid, cands in figures.items():
        both = [c for c in cands if c in selector and c in judge]
        if len(both) >= 2:
            out[pid] = 1.0 - tau([selector[c] for c in both], [judge[c] for c in both])
    return out


def ranked(pair_ids: Sequence[str], key: Mapping[str, float], descending: bool) -> list[str]:
    """``pair_ids`` by ``key`` (ties and figures without a key keep their order; the keyless go last)."""
    keyed = [p for p in pair_ids if p in key]
    keyed.sort(key=lambda p: -key[p] if descending else key[p])  # stable: ties keep sample order
    return keyed + [p for p in pair_ids if p not in key]


def read_scores(path: Path, field: str, stage: str) -> dict[str, float]:
    """candidate_id -> score of the selector's ``scores.jsonl`` or the judge's ``judgments.jsonl``, by the
    rules of :mod:`vital.artifacts`; an unusable line is refused (the order would silently miss it)."""
    drops = Drops()
    try:
        scores = (
            artifact_scores.judge_scores(path, drops)
            if stage == "judge"
            else artifact_scores.read_scores(path, drops, field)
        )
    except (FileNotFoundError, RecordError) as e:
        raise OrderError(str(e)) from None
    if drops:
        raise OrderError(f"{drops.summary(1)}; rerun the {stage} stage: dvc repro {stage}")
    return scores


def figure_order(
    order: str,
    pair_ids: Sequence[str],
    figures: Mapping[str, Sequence[str]],
    scores: Callable[[], Mapping[str, float]],
    judge: Callable[[], Mapping[str, float]] = dict,
) -> list[str]:
    """``pair_ids`` (in sample order) in the named order; ``figures`` maps a figure to its candidate ids,
    ``scores``/``judge`` load the selector/judge scores when the order needs them."""
    if order == "sample":
        return list(pair_ids)
    if order == "uncertain":
        return ranked(pair_ids, uncertainty(scores(), figures), descending=False)
    if order == "disagree":
        return ranked(pair_ids, disagreement(scores(), judge(), figures), descending=True)
    raise OrderError(f"order={order!r}: expected one of {', '.join(ORDERS)}")
