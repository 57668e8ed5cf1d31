"""Hallucination rate of free-text answers about figures whose findings are known (the demo's CHAIR/POPE).

Every finding an answer asserts (lesion present or not, side, count, size, modality: the claims
``vital.demo.claims`` reads) is checked against the figure's hidden truth. Two rates, after CHAIR
(Rohrbach et al. 2018): ``claim_rate``, wrong claims over checkable claims (CHAIR_i), and ``answer_rate``,
answers with at least one wrong claim over answers with a checkable claim (CHAIR_s); plus the wrong share
per finding and the answers that assert nothing checkable (a model that says nothing hallucinates nothing,
so that count is reported beside the rates, never folded into them).
"""

from __future__ import annotations

from collections.abc import Iterable

from vital.demo.claims import FINDING_KEYS, check_claims, extract_claims
from vital.io import RecordError


def hallucination_rate(answers: Iterable[tuple[str, str]], truth: dict[str, dict], source: str = "") -> dict:
    """``answers``: (figure pair_id, free-text answer); ``truth``: pair_id -> hidden findings
    (``vital.world.load_truth``). An answer about a figure without truth is a RecordError naming it."""
    n = with_claims = wrong_answers = checked = wrong = 0
    by_finding = {k: [0, 0] for k in FINDING_KEYS}  # [wrong, checked]
    for pair_id, text in answers:
        findings = truth.get(pair_id)
        if findings is None:
            raise RecordError(f"{source or 'answers'}: no hidden truth for figure {pair_id!r}")
        n += 1
        claims = extract_claims(text)
        answer_wrong = answer_checked = 0
        for key in FINDING_KEYS:
            if key in claims:
                ok, seen = check_claims({key: claims[key]}, findings)
                by_finding[key][0] += seen - ok
                by_finding[key][1] += seen
                answer_wrong, answer_checked = answer_wrong + seen - ok, answer_checked + seen
        checked, wrong = checked + answer_checked, wrong + answer_wrong
        with_claims += answer_checked > 0
        wrong_answers += answer_wrong > 0
    return {
        "answers": n,
        "answers_with_checkable_claims": with_claims,
        "answers_without_checkable_claims": n - with_claims,
        "claims_checked": checked,
        "claims_wrong": wrong,
        "claim_rate": round(wrong / checked, 4) if checked else None,
        "answer_rate": round(wrong_answers / with_claims, 4) if with_claims else None,
        "wrong_share_by_finding": {k: round(w / c, 4) if c else None for k, (w, c) in by_finding.items()},
    }
