"""The embed stage's inputs: candidates and their figure records, with unusable records counted by reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vital.drops import Drops
from vital.io import RecordError, read_records
from vital.schema import Candidate, FigureRecord


@dataclass
class EmbedInputs:
    figures: dict[str, FigureRecord]  # pair_id -> record, only figures with candidates
    candidates: list[Candidate]
    drops: Drops = field(default_factory=Drops)

    def problem(self, reason: str, where: str, detail: str = "") -> None:
        self.drops.add(reason, where, detail)


def read_inputs(candidates_file: Path, sample_file: Path) -> EmbedInputs:
    """Candidates and their figure records; records that cannot be embedded are counted by reason."""
    for f in (candidates_file, sample_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: not found (run the upstream stage first)")
    sample: dict[str, FigureRecord] = {}
    out = EmbedInputs({}, [])
    for _, rec in read_records(sample_file, FigureRecord, out.drops.invalid("invalid_figure_record")):
        sample[rec.pair_id] = rec
    seen: set[str] = set()
    for i, cand in read_records(candidates_file, Candidate, out.drops.invalid("invalid_candidate")):
        if cand.id in seen:
            out.problem("duplicate_candidate", f"{candidates_file}:{i}", cand.id)
            continue
        if cand.pair_id not in sample:
            out.problem(
                "unknown_figure", f"{candidates_file}:{i}", f"{cand.id} (figure {cand.pair_id} not in sample)"
            )
            continue
        if len(cand.conversations) < 2:
            out.problem("no_answer", f"{candidates_file}:{i}", cand.id)
            continue
        seen.add(cand.id)
        out.candidates.append(cand)
        fig = sample[cand.pair_id]  # with the image the candidate was generated on (a fetched shard ref)
        out.figures.setdefault(
            cand.pair_id, fig if fig.image == cand.image else fig.model_copy(update={"image": cand.image})
        )
    if not out.candidates:
        raise RecordError(
            f"{candidates_file}: no usable candidates ({dict(out.drops.counts) or 'no problems recorded'}; "
            f"{out.drops.summary()})"
        )
    return out
