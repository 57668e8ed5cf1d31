"""Offline stand-in for the LLM judge (model preference): the ``heuristic`` judge.

Like a text-only judge prompted with the caption, it never sees the hidden truth: it checks what a
conversation asserts against what the caption and in-text mentions state, penalises hedging, leakage,
truncation and terse answers, and adds Gaussian noise. When the caption leaves a fact out (e.g. the
side), a hallucination about that fact goes unnoticed, which is what makes it noisier than a clinician.
"""

from __future__ import annotations

from collections.abc import Iterator

from vital.demo.claims import check_claims, extract_claims, gpt_text, style_flags
from vital.judge import turns_of
from vital.llm.accounting import offline_metrics
from vital.params import Params
from vital.paths import Paths
from vital.progress import progress
from vital.schema import Candidate, FigureRecord
from vital.seeding import rng_for

PENALTIES = {"hedges": 2.0, "leaks": 2.5, "truncated": 2.0, "short": 1.0}


def caption_facts(record: FigureRecord) -> dict:
    """Findings stated by the caption and in-text mentions."""
    return extract_claims(" ".join([record.fig_caption, *record.in_text_mention]))


class HeuristicJudge:
    """``score(record, conversation)`` -> (0..10, rationale); deterministic per (seed, conversation)."""

    name = "heuristic"

    def __init__(self, noise: float = 1.5, seed: int = 0):
        if noise < 0:
            raise ValueError(f"heuristic judge: noise must be >= 0 (got {noise})")
        self.noise = noise
        self.seed = seed

    def score(self, record: FigureRecord, conversation: list[dict]) -> tuple[float, str]:
        facts = caption_facts(record)
        claims = extract_claims(gpt_text(conversation))
        correct, checked = check_claims(claims, facts)
        wrong = checked - correct
        flags = style_flags(conversation)
        notes: list[str] = []
        score = 6.0 + 0.5 * correct - 3.0 * wrong + 0.3 * min(flags["rounds"], 3)
        if checked:
            notes.append(f"{correct}/{checked} claims consistent with the caption")
        else:
            notes.append("nothing checkable against the caption")
        for flag, weight in PENALTIES.items():
            if flags[flag]:
                score -= weight * (min(int(flags[flag]), 2) if flag in ("hedges", "leaks") else 1)
                notes.append(flag)
        if self.noise:
            rng = rng_for(self.seed, "judge", record.pair_id, _digest(conversation))
            score += float(rng.normal(0.0, self.noise))
        score = round(min(10.0, max(0.0, score)), 2)
        return score, "; ".join(notes)


def _digest(conversation: list[dict]) -> str:
    return "\x1f".join(f"{t.get('from')}:{t.get('value')}" for t in conversation)


class HeuristicBackend:
    """Offline stand-in for the model judge (demo world only)."""

    def __init__(self, params: Params, paths: Paths) -> None:
        self.jp, self.paths = params.judge, paths
        self.judge = None

    def preflight(self) -> None:
        self.judge = HeuristicJudge(self.jp.noise, self.jp.seed)

    def score(
        self, items: list[tuple[Candidate, FigureRecord]]
    ) -> Iterator[tuple[Candidate, float | None, str, str]]:
        for cand, rec in progress(items, desc="judge (heuristic)", total=len(items)):
            score, rationale = self.judge.score(rec, turns_of(cand))
            yield cand, float(score), rationale, ""

    def provenance(self) -> dict:
        return {"backend": "heuristic", "model": self.jp.model, "noise": self.jp.noise}

    def metrics(self) -> dict:
        return offline_metrics()
