"""The embed stage's inputs: candidates and their figure records, with unusable records counted by reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vital.artifacts.candidates import read_candidates
from vital.artifacts.sample import read_sample
from vital.drops import Drops
from vital.schema import Candidate, FigureRecord


@dataclass
class EmbedInputs:
    figures: dict[str, FigureRecord]  # pair_id -> record, only figures with candidates
    candidates: list[Candidate]
    drops: Drops = field(default_factory=Drops)

    def problem(self, reason: str, where: str, detail: str = "") -> None:
        self.drops.add(reason, where, detail)


def read_inputs(candidates_file: Path, sample_file: Path) -> EmbedInputs:
    """Candidates and their figure records, by the rules of :mod:`vital.artifacts`: unusable lines and
    candidates are dropped and counted by reason; no usable candidate is fatal."""
    out = EmbedInputs({}, [])
    sample = read_sample(sample_file, out.drops)
    out.candidates = read_candidates(candidates_file, out.drops, sample)
    for cand in out.candidates:
        fig = sample[cand.pair_id]  # with the image the candidate was generated on (a fetched shard ref)
        out.figures.setdefault(
            cand.pair_id, fig if fig.image == cand.image else fig.model_copy(update={"image": cand.image})
        )
    return out
