"""Offline stand-in for the LLM judge (model preference): the ``heuristic`` judge.

Like a text-only judge prompted with the caption, it never sees the hidden truth: it checks what a
conversation asserts against what the caption and in-text mentions state, penalises hedging, leakage,
truncation and terse answers, and adds Gaussian noise. When the caption leaves a fact out (e.g. the
side), a hallucination about that fact goes unnoticed, which is what makes it noisier than a clinician.

It also has the biases LLM judges are measured to have, each a parameter whose 0 is the unbiased judge
(docs/generation.md, "The judge's biases", has the sources and says which defaults are judgements):

- ``length_bias``: points added per doubling of the answers' word count over ``LENGTH_REFERENCE_WORDS``
  (verbosity bias: MT-Bench, Zheng et al. 2023; AlpacaEval's length control, Dubois et al. 2024);
- ``confidence_leniency``: the share of the penalty for a caption-contradicted claim forgiven when the
  answers do not hedge (confident wording reads as correct);
- ``image_blindness``: the share of the credit and penalty for image-only findings (side, count, size:
  what only the pixels settle) that the judge does not give.

The simulated clinician (``vital.demo.simulated_clinician``) has none of them.
"""

from __future__ import annotations

import math
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
CORRECT_CLAIM_CREDIT, WRONG_CLAIM_PENALTY = 0.5, 3.0
IMAGE_ONLY_FINDINGS = ("side", "count", "size")
# about the median length of the template generator's answers (words, all rounds): length_bias moves
# longer-than-typical answers up and shorter ones down rather than shifting every score one way
LENGTH_REFERENCE_WORDS = 30


def caption_facts(record: FigureRecord) -> dict:
    """Findings stated by the caption and in-text mentions."""
    return extract_claims(" ".join([record.fig_caption, *record.in_text_mention]))


class HeuristicJudge:
    """``score(record, conversation)`` -> (0..10, rationale); deterministic per (seed, conversation)."""

    name = "heuristic"

    def __init__(
        self,
        noise: float = 1.5,
        seed: int = 0,
        length_bias: float = 0.0,
        confidence_leniency: float = 0.0,
        image_blindness: float = 0.0,
    ):
        if noise < 0:
            raise ValueError(f"heuristic judge: noise must be >= 0 (got {noise})")
        if length_bias < 0:
            raise ValueError(f"heuristic judge: length_bias must be >= 0 (got {length_bias})")
        for name, value in (
            ("confidence_leniency", confidence_leniency),
            ("image_blindness", image_blindness),
        ):
            if not 0 <= value <= 1:
                raise ValueError(f"heuristic judge: {name} must be in [0, 1] (got {value})")
        self.noise = noise
        self.seed = seed
        self.length_bias = length_bias
        self.confidence_leniency = confidence_leniency
        self.image_blindness = image_blindness

    def score(self, record: FigureRecord, conversation: list[dict]) -> tuple[float, str]:
        facts = caption_facts(record)
        text = gpt_text(conversation)
        claims = extract_claims(text)
        correct, checked = check_claims(claims, facts)
        wrong = checked - correct
        flags = style_flags(conversation)
        notes: list[str] = []
        # an image-only finding weighs (1 - image_blindness) of a claim the caption alone can settle
        image_only = {k: v for k, v in claims.items() if k in IMAGE_ONLY_FINDINGS}
        img_correct, img_checked = check_claims(image_only, facts)
        seen = 1.0 - self.image_blindness
        weighted_correct = correct - img_correct * (1 - seen)
        weighted_wrong = wrong - (img_checked - img_correct) * (1 - seen)
        penalty = WRONG_CLAIM_PENALTY * (1.0 - self.confidence_leniency * (flags["hedges"] == 0))
        score = 6.0 + CORRECT_CLAIM_CREDIT * weighted_correct - penalty * weighted_wrong
        score += 0.3 * min(flags["rounds"], 3)
        if self.length_bias:
            words = max(len(text.split()), 1)
            score += self.length_bias * math.log2(words / LENGTH_REFERENCE_WORDS)
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
        jp = self.jp
        self.judge = HeuristicJudge(
            jp.noise, jp.seed, jp.length_bias, jp.confidence_leniency, jp.image_blindness
        )

    def score(
        self, items: list[tuple[Candidate, FigureRecord]]
    ) -> Iterator[tuple[Candidate, float | None, str, str]]:
        for cand, rec in progress(items, desc="judge (heuristic)", total=len(items)):
            score, rationale = self.judge.score(rec, turns_of(cand))
            yield cand, float(score), rationale, ""

    def provenance(self) -> dict:
        jp = self.jp
        return {
            "backend": "heuristic",
            "model": jp.model,
            "noise": jp.noise,
            "length_bias": jp.length_bias,
            "confidence_leniency": jp.confidence_leniency,
            "image_blindness": jp.image_blindness,
        }

    def metrics(self) -> dict:
        return offline_metrics()
