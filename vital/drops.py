"""What a stage skipped, in one layout for every stage's metrics.

Every dropped record is counted by reason; the first ``listed`` are kept with where they were (``file:line``
or an id) and why. ``metrics()`` gives the keys of the metrics layout (vital/stats.py): ``dropped``,
``dropped_by_reason``, ``dropped_examples``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

LISTED = 50


class Drops:
    def __init__(self, listed: int = LISTED) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: list[dict[str, Any]] = []
        self.listed = listed

    def add(self, reason: str, where: str = "", detail: str = "", **extra: Any) -> None:
        self.counts[reason] += 1
        if len(self.examples) < self.listed:
            self.examples.append({"where": where, "reason": reason, "detail": detail, **extra})

    @classmethod
    def from_lines(cls, lines: list[str], reason: str = "invalid_record", listed: int = LISTED) -> Drops:
        """Drops from ``"<where>: <why>"`` lines; a line whose why starts "duplicate" counts as ``duplicate``."""
        drops = cls(listed)
        for line in lines:
            where, _, detail = line.partition(": ")
            drops.add("duplicate" if detail.startswith("duplicate") else reason, where, detail)
        return drops

    def invalid(self, reason: str):
        """A ``read_records`` callback counting each invalid line under ``reason``."""
        return lambda where, detail: self.add(reason, where, detail)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __bool__(self) -> bool:
        return self.total > 0

    def metrics(self) -> dict[str, Any]:
        return {
            "dropped": self.total,
            "dropped_by_reason": dict(sorted(self.counts.items())),
            "dropped_examples": self.examples,
        }

    def summary(self, limit: int = 3) -> str:
        """The first few drops on one line, for an error message."""
        return "; ".join(f"{e['where']}: {e['reason']} ({e['detail']})" for e in self.examples[:limit])
