"""The clinician preferences (``artifacts/labels.jsonl``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vital.artifacts.lines import records, require
from vital.drops import Drops
from vital.schema import Preference


def read_labels(path: Path, drops: Drops, candidates: Mapping[str, str] | None = None) -> list[Preference]:
    """The clinician preferences, in file order.

    Dropped: ``bad_line``; ``label_repeats_candidate`` (a ranking naming a candidate twice); with
    ``candidates`` (candidate id -> pair_id) given, ``label_unknown_candidate`` and
    ``label_candidate_of_other_figure``. Fatal: a missing file. An empty file is not: without labels
    the pairs are the judge's alone (the pairs stage warns)."""
    require(path)
    out = []
    for where, _, p in records(path, Preference, drops):
        if candidates is not None:
            unknown = [c for c in p.ranking if c not in candidates]
            if unknown:
                drops.add("label_unknown_candidate", where, f"{p.annotator} names unknown {unknown}")
                continue
            foreign = [c for c in p.ranking if candidates[c] != p.pair_id]
            if foreign:
                drops.add("label_candidate_of_other_figure", where, f"{foreign} not of figure {p.pair_id}")
                continue
        if len(set(p.ranking)) != len(p.ranking):
            drops.add("label_repeats_candidate", where, f"{p.ranking}")
            continue
        out.append(p)
    return out
