"""The generated candidates (``artifacts/candidates.jsonl``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from vital.artifacts.lines import none_usable, records, require
from vital.drops import Drops
from vital.io import BOM
from vital.schema import Candidate


@dataclass(frozen=True, slots=True)
class CandidateRef:
    """A candidate without its conversation: where to read it back from ``candidates.jsonl``."""

    id: str
    pair_id: str
    domain: str
    offset: int


def _candidates(
    path: Path, drops: Drops, figures: Mapping[str, object] | None
) -> Iterator[tuple[int, Candidate]]:
    require(path)
    seen: set[str] = set()
    for where, offset, c in records(path, Candidate, drops):
        if c.id in seen:
            drops.add("duplicate_candidate", where, c.id)
            continue
        if figures is not None and c.pair_id not in figures:
            drops.add("figure_not_in_sample", where, f"{c.id}: figure {c.pair_id} is not in the sample")
            continue
        if not any(t.from_ == "gpt" for t in c.conversations):
            drops.add("no_answer", where, c.id)
            continue
        seen.add(c.id)
        yield offset, c
    if not seen:
        raise none_usable(path, "candidate", drops)


def read_candidates(path: Path, drops: Drops, figures: Mapping[str, object] | None = None) -> list[Candidate]:
    """The candidates, in file order.

    Dropped: ``bad_line``; ``duplicate_candidate`` (a second record of an id: the first wins);
    ``figure_not_in_sample`` (only when ``figures``, the sample by pair_id, is given); ``no_answer`` (no
    gpt turn). Fatal: a missing file, no usable candidate."""
    return [c for _, c in _candidates(path, drops, figures)]


def candidate_refs(
    path: Path, drops: Drops, figures: Mapping[str, object] | None = None
) -> list[CandidateRef]:
    """:func:`read_candidates` without the conversations (validated once, read back by
    :class:`CandidateFile`): memory grows by a small tuple per candidate."""
    return [
        CandidateRef(c.id, c.pair_id, c.domain, offset) for offset, c in _candidates(path, drops, figures)
    ]


class CandidateFile:
    """Reads candidates back by offset (one open file, one record in memory at a time)."""

    def __init__(self, path: Path):
        self.f = path.open("rb")

    def get(self, ref: CandidateRef) -> Candidate:
        self.f.seek(ref.offset)
        line = self.f.readline()
        return Candidate.model_validate_json(line[3:] if line.startswith(BOM.encode()) else line)

    def close(self) -> None:
        self.f.close()
