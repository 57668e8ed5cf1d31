"""Offline stand-in for a vision LLM writing instruction data: the ``template`` generator.

It "sees" the image through the hidden truth and writes LLaVA conversations from templates, failing
the way real generators do: hallucinated findings, vague hedging, leaning on the caption instead of
the image, truncated output. It never writes which failure it simulated into its output.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np

from vital.generate import Result, validated
from vital.llm.accounting import offline_metrics
from vital.params import Params
from vital.paths import Paths
from vital.progress import progress
from vital.schema import FigureRecord
from vital.seeding import rng_for
from vital.world import load_truth
from vital.world.conversation import LESION_ONLY, QUESTIONS, question_plan, write_planned
from vital.world.findings import MODALITIES, STYLES
from vital.world.language import lower_first

# share of candidates per failure mode; "accurate" is about half so that selection matters
MODES: dict[str, float] = {
    "accurate": 0.5,
    "hallucinated": 0.22,
    "vague": 0.1,
    "leaky": 0.09,
    "truncated": 0.09,
}

# distinct questions about a figure without a lesion (modality, findings, describe templates)
MAX_DISTINCT_ROUNDS = sum(len(QUESTIONS[k]) for k in QUESTIONS if k not in LESION_ONLY)

_VAGUE = (
    "There may be some abnormality in the image, but it is difficult to determine its exact nature.",
    "It is unclear whether there is a lesion; possibly some subtle changes are present.",
    "The findings might represent a lesion, but this cannot be determined with certainty.",
    "Some abnormality may be present; further evaluation would be needed.",
)
_LEAK = (
    "As described in the caption, {}",
    "According to the figure legend, {}",
    "As mentioned in the text, {}",
)


def _hallucinate(truth: dict, rng: np.random.Generator) -> tuple[dict, str]:
    """A copy of the findings with one plausible error, and the question kind that exposes it."""
    wrong = copy.deepcopy(truth)
    options = ["presence", "modality"] + (
        ["side", "side", "count", "size"] if truth["lesion"] else ["presence"]
    )
    kind = options[int(rng.integers(len(options)))]
    if kind == "side":
        wrong["side"] = "right" if truth["side"] == "left" else "left"
        return wrong, "side"
    if kind == "count":
        wrong["count"] = int(rng.choice([c for c in (1, 2, 3) if c != truth["count"]]))
        return wrong, "count"
    if kind == "size":
        wrong["size"] = "large" if truth["size"] == "small" else "small"
        return wrong, "size"
    if kind == "modality":
        other = [d for d in STYLES if d != truth["domain"]]
        wrong["domain"] = other[int(rng.integers(len(other)))]
        wrong["modality"] = MODALITIES[wrong["domain"]]
        return wrong, "modality"
    if truth["lesion"]:
        wrong.update(lesion=False, side=None, count=0, size=None)
    else:
        wrong.update(
            lesion=True,
            side=("left", "right")[int(rng.integers(2))],
            count=int(rng.integers(1, 3)),
            size=("small", "large")[int(rng.integers(2))],
        )
    return wrong, "findings"


def _truncate(text: str, rng: np.random.Generator) -> str:
    words = text.split()
    keep = max(2, int(len(words) * rng.uniform(0.35, 0.7)))
    return " ".join(words[:keep]).rstrip(".,;:")


class TemplateGenerator:
    """``generate(record, n)`` -> n conversations of ``min_rounds``..``max_rounds`` Q&A rounds (uniform);
    deterministic per (seed, pair_id, candidate index)."""

    name = "template"

    def __init__(self, truth: dict[str, dict], seed: int = 0, min_rounds: int = 1, max_rounds: int = 3):
        if not 1 <= min_rounds <= max_rounds:
            raise ValueError(
                f"template generator: need 1 <= min_rounds <= max_rounds, got {min_rounds}, {max_rounds}"
            )
        if min_rounds > MAX_DISTINCT_ROUNDS:
            raise ValueError(
                f"template generator: min_rounds {min_rounds} exceeds the {MAX_DISTINCT_ROUNDS} distinct "
                "questions it can ask about a figure without a lesion"
            )
        self.truth = truth
        self.seed = seed
        self.min_rounds, self.max_rounds = min_rounds, max_rounds

    def generate(self, record: FigureRecord, n: int) -> list[list[dict]]:
        try:
            truth = self.truth[record.pair_id]
        except KeyError:
            raise KeyError(
                f"template generator: no hidden truth for figure {record.pair_id!r} "
                "(the template backend only works on the demo world's corpus)"
            ) from None
        return [self._one(record, truth, k) for k in range(n)]

    def _one(self, record: FigureRecord, truth: dict, k: int) -> list[dict]:
        rng = rng_for(self.seed, "template", record.pair_id, k)
        mode = str(rng.choice(list(MODES), p=list(MODES.values())))
        rounds = int(rng.integers(self.min_rounds, self.max_rounds + 1))
        if mode == "hallucinated":
            wrong, exposed = _hallucinate(truth, rng)
            return write_planned(wrong, question_plan(wrong, rounds, rng, first=exposed), rng)
        conv = write_planned(truth, question_plan(truth, rounds, rng), rng)
        answers = [i for i, t in enumerate(conv) if t["from"] == "gpt"]
        if mode == "vague":
            for i in answers:
                if rng.random() < 0.7 or i == answers[0]:
                    conv[i]["value"] = _VAGUE[int(rng.integers(len(_VAGUE)))]
        elif mode == "leaky":
            i = answers[int(rng.integers(len(answers)))]
            caption = record.fig_caption.rstrip(".")
            lead = _LEAK[int(rng.integers(len(_LEAK)))]
            conv[i]["value"] = lead.format(lower_first(caption) + ".")
        elif mode == "truncated":
            conv[answers[-1]]["value"] = _truncate(conv[answers[-1]]["value"], rng)
        return conv


class TemplateBackend:
    """Offline stand-in: the demo world's template generator (free, no requests)."""

    name = "template"

    def __init__(self, params: Params, paths: Paths) -> None:
        self.gp, self.paths = params.generate, paths
        self.generator = None

    def preflight(self) -> None:
        if not self.paths.truth.exists():
            raise FileNotFoundError(
                f"{self.paths.truth}: the template backend needs the demo world (run `vital world`)"
            )
        self.generator = TemplateGenerator(
            load_truth(self.paths.truth), self.gp.seed, self.gp.min_rounds, self.gp.max_rounds
        )

    def generate(self, figures: list[FigureRecord]) -> Iterator[Result]:
        prov = {"backend": "template", "model": self.gp.model}
        for rec in progress(figures, desc="generate (template)", total=len(figures)):
            convs = self.generator.generate(rec, self.gp.candidates)
            for k in range(self.gp.candidates):
                if k >= len(convs):
                    yield Result(rec, k, None, "not_generated")
                    continue
                yield validated(rec, k, convs[k], self.gp.min_rounds, prov)

    def metrics(self) -> dict:
        return offline_metrics()
