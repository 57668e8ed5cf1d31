"""The sampled figures (``artifacts/sample.jsonl``)."""

from __future__ import annotations

from pathlib import Path

from vital.artifacts.lines import first_by
from vital.drops import Drops
from vital.schema import FigureRecord


def read_sample(path: Path, drops: Drops) -> dict[str, FigureRecord]:
    """``pair_id -> FigureRecord`` of the sampled figures, in file order.

    Dropped: ``bad_line``; ``duplicate_figure`` (a second record of a pair_id: the first wins).
    Fatal: a missing file, no usable record."""
    return first_by(path, FigureRecord, drops, "pair_id", "duplicate_figure", "figure record")
