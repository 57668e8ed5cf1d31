"""Quality scorers of a curated subset, chosen by ``bakeoff.quality`` (``vital.registry``).

A scorer is built as ``Scorer(paths)`` and rates one conversation: ``flags(pair_id, conversations)`` ->
``{measure: 0/1 or a number}``; the bakeoff reports each measure's mean per subset. ``flawed`` (1 when
the conversation has any flaw) is the headline: a lower share is better data.

``truth`` exists only in the demo world, whose hidden truth is known (``vital.demo.truth_quality``); the
paper profile sets ``none`` and measures its subsets downstream (``bakeoff/dvc.yaml``) instead.
"""

from __future__ import annotations

from vital.paths import Paths
from vital.registry import Backend


class NoQuality:
    """No hidden truth outside the demo: the subsets are written, and their quality is left to downstream."""

    measures: tuple[str, ...] = ()
    lower_is_better: tuple[str, ...] = ()

    def __init__(self, paths: Paths):
        self.paths = paths

    def flags(self, pair_id: str, conversations: list[dict]) -> dict[str, float]:
        return {}


QUALITY: dict[str, Backend] = {
    "truth": Backend("vital.demo.truth_quality:TruthQuality", reads=("data/corpus/truth.jsonl",)),
    "none": Backend("vital.bakeoff.quality:NoQuality"),
}
