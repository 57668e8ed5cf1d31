"""Training and evaluation pairs for the selector, from judge scores (model) and clinician labels (human).

Model pairs are made within each figure (``pairs.model_pairing: within_figure``, vital's) or sampled across
figures from different judge-score levels (``paper``, BioMed-VITAL's released code; docs/fidelity.md).

Splits are by figure: a figure's candidates are all train, all val or all held out. Held-out figures are
the ``pairs.heldout_fraction`` of the human-labelled figures; their model pairs are held out too, so both
"agreement with held-out clinicians" and "agreement with the judge" are measured on unseen figures.
"""

from __future__ import annotations

import hashlib
import math
import random
import sys
from collections import defaultdict
from itertools import combinations
from typing import Any

from vital.artifacts.labels import read_labels
from vital.artifacts.scores import read_judgments
from vital.drops import Drops
from vital.io import write_jsonl
from vital.params import PairsParams, Params
from vital.paths import Paths
from vital.schema import Judgment, Pair, Preference


def ranking_pairs(pref: Preference) -> tuple[list[tuple[str, str]], int]:
    """(winner, loser) pairs of a best-first ranking, k(k-1)/2 of them minus pairs inside a tie group."""
    tie_group = {c: g for g, group in enumerate(pref.ties) for c in group}
    pairs, tied = [], 0
    for a, b in combinations(pref.ranking, 2):
        if a in tie_group and tie_group.get(a) == tie_group.get(b):
            tied += 1
            continue
        pairs.append((a, b))
    return pairs, tied


def _figure_rng(seed: int, pair_id: str) -> random.Random:
    # per-figure stream: adding or removing one figure leaves every other figure's sampled pairs unchanged
    return random.Random(int(hashlib.sha256(f"{seed}:{pair_id}".encode()).hexdigest()[:16], 16))


def model_pairs(
    judgments: dict[str, Judgment], pp: PairsParams, counts: dict[str, int]
) -> dict[str, list[tuple[str, str]]]:
    """Per figure, up to ``model_pairs_per_figure`` (winner, loser) pairs with a judge-score gap of at
    least ``min_score_gap``; equal-score and small-gap pairs are never made, only counted."""
    by_fig: dict[str, list[Judgment]] = defaultdict(list)
    for j in judgments.values():
        by_fig[j.pair_id].append(j)
    out = {}
    for pid in sorted(by_fig):
        eligible = []
        for a, b in combinations(sorted(by_fig[pid], key=lambda j: j.candidate_id), 2):
            gap = abs(a.score - b.score)
            if gap == 0:
                counts["equal_score_pairs"] += 1
            elif gap < pp.min_score_gap:
                counts["below_gap_pairs"] += 1
            else:
                win, lose = (a, b) if a.score > b.score else (b, a)
                eligible.append((win.candidate_id, lose.candidate_id))
        counts["eligible_model_pairs"] += len(eligible)
        rng = _figure_rng(pp.seed, pid)
        out[pid] = rng.sample(eligible, min(pp.model_pairs_per_figure, len(eligible)))
    return out


def cross_figure_pairs(
    judgments: dict[str, Judgment], split: dict[str, str], pp: PairsParams, counts: dict[str, int]
) -> list[Pair]:
    """``pairing: paper``: model pairs sampled across figures as BioMed-VITAL's released selection code does.

    A level is the judge score rounded to a whole point (the reference's judge answers whole points; a
    fractional judge would otherwise give each candidate a level of its own). Each pair draws two different
    levels, then one candidate of each level (with replacement, so a pair can repeat); the higher level wins. Levels holding a single candidate are never drawn (the
    reference redraws them). Where the reference splits each level 4:1 into train and test candidates, the
    draw here stays inside one figure split, so validation and held-out figures stay unseen: the train split
    gets ``model_pairs`` pairs, the others pairs in proportion to their candidates.
    """
    by_split: dict[str, dict[int, list[Judgment]]] = defaultdict(lambda: defaultdict(list))
    for j in sorted(judgments.values(), key=lambda j: j.candidate_id):
        by_split[split[j.pair_id]][math.floor(j.score + 0.5)].append(j)
    n_train = sum(len(c) for c in by_split["train"].values())
    pairs = []
    for name in ("train", "val", "heldout"):
        levels = {s: c for s, c in by_split[name].items() if len(c) >= 2}
        n_cands = sum(len(c) for c in by_split[name].values())
        wanted = pp.model_pairs if name == "train" else round(pp.model_pairs * n_cands / max(n_train, 1))
        if len(levels) < 2:
            if wanted and n_cands:
                counts[f"model_pairs_not_made_{name}"] += wanted  # fewer than two levels to pair across
            continue
        scores = sorted(levels)
        rng = _figure_rng(pp.seed, f"paper-pairing:{name}")
        for _ in range(wanted):
            high, low = sorted(rng.sample(scores, 2), reverse=True)
            win, lose = rng.choice(levels[high]), rng.choice(levels[low])
            counts["cross_figure_model_pairs"] += win.pair_id != lose.pair_id
            # a cross-figure pair is filed under its winner's figure (both figures share the split)
            pairs.append(
                Pair(
                    winner=win.candidate_id,
                    loser=lose.candidate_id,
                    pair_id=win.pair_id,
                    source="model",
                    split=name,
                )
            )
    counts["judge_score_levels_train"] = len(by_split["train"])
    return pairs


def split_figures(human_figs: set[str], all_figs: set[str], pp: PairsParams) -> dict[str, str]:
    """pair_id -> train/val/heldout, seeded; held-out figures are drawn from the human-labelled ones."""
    rng = random.Random(pp.seed)
    human = sorted(human_figs)
    rng.shuffle(human)
    n_held = round(len(human) * pp.heldout_fraction)
    if pp.heldout_fraction > 0 and len(human) >= 2:
        n_held = max(1, min(n_held, len(human) - 1))
    split = {pid: "heldout" for pid in human[:n_held]}
    rest = sorted(all_figs - set(split))
    rng.shuffle(rest)
    n_val = round(len(rest) * pp.val_fraction)
    if pp.val_fraction > 0 and len(rest) >= 2:
        n_val = max(1, n_val)
    split.update({pid: "val" for pid in rest[:n_val]})
    split.update({pid: "train" for pid in rest[n_val:]})
    return split


def build_pairs(
    judgments: dict[str, Judgment], prefs: list[Preference], pp: PairsParams
) -> tuple[list[Pair], dict[str, Any]]:
    counts: dict[str, int] = defaultdict(int)
    human_figs = {p.pair_id for p in prefs}
    split = split_figures(human_figs, {j.pair_id for j in judgments.values()}, pp)
    if pp.model_pairing == "paper":
        pairs = cross_figure_pairs(judgments, split, pp, counts)
    else:
        pairs = [
            Pair(winner=w, loser=lo, pair_id=pid, source="model", split=split[pid])
            for pid, fig_pairs in model_pairs(judgments, pp, counts).items()
            for w, lo in fig_pairs
        ]
    for pref in prefs:
        made, tied = ranking_pairs(pref)
        counts["tied_human_pairs"] += tied
        pairs += [
            Pair(
                winner=w,
                loser=lo,
                pair_id=pref.pair_id,
                source="human",
                split=split[pref.pair_id],
                annotator=pref.annotator,
            )
            for w, lo in made
        ]
    table = defaultdict(int)
    for p in pairs:
        table[f"{p.source}_{p.split}"] += 1
    figs = defaultdict(int)
    for s in split.values():
        figs[s] += 1
    stats = {
        "model_pairing": pp.model_pairing,
        "pairs": len(pairs),
        "by_source_split": dict(sorted(table.items())),
        "figures_by_split": dict(sorted(figs.items())),
        "human_labelled_figures": len(human_figs),
        "labels_used": len(prefs),
        **dict(sorted(counts.items())),
    }
    return pairs, stats


def run(pp: PairsParams, paths: Paths) -> dict[str, Any]:
    """The pairs stage: ``artifacts/pairs.jsonl`` and ``metrics/pairs.json``."""
    problems = Drops()
    judgments = read_judgments(paths.judgments, problems)
    prefs = read_labels(paths.labels, problems, {cid: j.pair_id for cid, j in judgments.items()})
    warnings = []
    if not prefs:
        warnings.append(
            f"{paths.labels}: no usable clinician labels; only model pairs are made, so the selector "
            "trains as human_weight=0 and agreement with held-out clinicians cannot be measured"
        )
        print(f"[pairs] warning: {warnings[-1]}", file=sys.stderr)
    pairs, stats = build_pairs(judgments, prefs, pp)
    write_jsonl(paths.pairs, pairs)
    metrics = {**stats, **problems.metrics(), "warnings": warnings}
    return metrics


def run_stage(p: Params, paths: Paths) -> dict[str, Any]:
    return run(p.pairs, paths)


def headline(detail: dict) -> dict:
    return {"pairs": detail.get("pairs")}
