"""The bakeoff's ``truth`` quality scorer (demo world only): how many curated conversations are flawed.

A conversation is flawed when, against the figure's hidden truth (``data/corpus/truth.jsonl``), it asserts
a wrong finding (any of lesion, side, count, size, modality), or hedges, cites the caption instead of the
image (leakage) or is truncated: the complement of the simulated clinician's :func:`is_accurate`. Each
flaw is reported on its own, beside the clinician's utility (:func:`truth_utility`, higher is better).
"""

from __future__ import annotations

from vital.demo.claims import check_claims, extract_claims, gpt_text, style_flags
from vital.demo.simulated_clinician import is_accurate, truth_utility
from vital.io import RecordError
from vital.paths import Paths
from vital.world import load_truth


class TruthQuality:
    measures = ("flawed", "wrong_finding", "wrong_side", "leakage", "hedging", "truncated", "utility")
    lower_is_better = ("flawed", "wrong_finding", "wrong_side", "leakage", "hedging", "truncated")

    def __init__(self, paths: Paths):
        self.path = paths.truth
        self.truth = load_truth(paths.truth)

    def flags(self, pair_id: str, conversations: list[dict]) -> dict[str, float]:
        truth = self.truth.get(pair_id)
        if truth is None:
            raise RecordError(f"{self.path}: no hidden truth for figure {pair_id!r}")
        claims = extract_claims(gpt_text(conversations))
        correct, checked = check_claims(claims, truth)
        style = style_flags(conversations)
        side_checked = "side" in claims and (truth.get("lesion") is False or truth.get("side") is not None)
        wrong_side = side_checked and (truth.get("lesion") is False or claims["side"] != truth.get("side"))
        return {
            "flawed": float(not is_accurate(conversations, truth)),
            "wrong_finding": float(correct < checked),
            "wrong_side": float(wrong_side),
            "leakage": float(style["leaks"] > 0),
            "hedging": float(style["hedges"] > 0),
            "truncated": float(style["truncated"]),
            "utility": truth_utility(conversations, truth),
        }
