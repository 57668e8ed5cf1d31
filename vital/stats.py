"""What a stage run produced, in one layout for every stage: ``StageStats``, written by ``vital.stage``.

An entry returns its record (a dict); ``vital.stage.call`` times it with one clock and writes two files:

- the **evidence** ``metrics/detail/<stage>.json`` (foreach: ``metrics/detail/<script>/<item>.json``), a
  plain ``cache: false`` out of the stage, git-tracked: ``stage``, ``item``, ``wall_s``, ``headline``, the drops
  (``dropped``, ``dropped_by_reason``, ``dropped_examples``: records skipped as unusable), the failures
  (``failed``, ``failed_by_reason``, ``failed_examples``: outputs that could not be produced) and ``detail``
  (everything else the entry returned);
- the **headline** ``metrics/<stage>.json``, the stage's DVC ``metrics:`` file, for the stages whose row names a
  ``headline`` function: the few numbers a person compares across experiments (``dvc exp show``,
  ``dvc metrics diff``). Stages without one write only their evidence.
"""

from __future__ import annotations

import importlib
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vital.drops import Drops
from vital.io import read_json, write_json

DETAIL_DIR = "metrics/detail"
DROP_KEYS = ("dropped", "dropped_by_reason", "dropped_examples")
FAILURE_KEYS = ("failed", "failed_by_reason", "failed_examples")
LAYOUT_KEYS = ("stage", "item", "wall_s", "headline", *DROP_KEYS, *FAILURE_KEYS, "detail")


class Failures(Drops):
    """Outputs that could not be produced (a refused request, an unparseable reply), by reason, the first listed."""

    def metrics(self) -> dict[str, Any]:
        return {
            "failed": self.total,
            "failed_by_reason": dict(sorted(self.counts.items())),
            "failed_examples": self.examples,
        }


def clock() -> float:
    """The one clock of a stage's wall time."""
    return time.perf_counter()


def seconds(start: float) -> float:
    """Wall seconds since ``start`` (``clock()``), rounded the one way every file uses."""
    return round(clock() - start, 3)


@dataclass
class StageStats:
    """One run of one stage (or one foreach item): what the evidence file holds."""

    stage: str
    item: str = ""
    wall_s: float = 0.0
    headline: dict[str, Any] = field(default_factory=dict)
    drops: dict[str, Any] = field(default_factory=lambda: Drops().metrics())
    failures: dict[str, Any] = field(default_factory=lambda: Failures().metrics())
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, stage: str, record: dict[str, Any] | None, item: str = "", wall_s: float = 0.0):
        """Split an entry's record: the drop and failure keys go to their places, the rest is ``detail``."""
        detail = dict(record or {})
        detail.pop("wall_s", None)  # a stage's own clock, if it still keeps one, never wins over run_stage's
        drops = {k: detail.pop(k) for k in DROP_KEYS if k in detail}
        failures = {k: detail.pop(k) for k in FAILURE_KEYS if k in detail}
        stats = cls(stage, item, wall_s, detail=detail)
        stats.drops.update(drops)
        stats.failures.update(failures)
        return stats

    def evidence(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "item": self.item,
            "wall_s": self.wall_s,
            "headline": self.headline,
            **self.drops,
            **self.failures,
            "detail": self.detail,
        }


def evidence_path(root: Path, stage: str, item: str = "") -> Path:
    return Path(root) / DETAIL_DIR / (f"{stage}/{item}.json" if item else f"{stage}.json")


def headline_path(root: Path, stage: str) -> Path:
    return Path(root) / "metrics" / f"{stage}.json"


def headline_of(ref: str, detail: dict[str, Any]) -> dict[str, Any]:
    """The numbers ``ref`` ("module:function", the Stage row's ``headline``) takes from a record's detail;
    missing ones (an empty run) are left out, floats rounded to 4 places so ``dvc exp show`` stays narrow."""
    module, _, attr = ref.partition(":")
    return _numbers(getattr(importlib.import_module(module), attr)(detail))


def _numbers(tree: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            if inner := _numbers(v):
                out[k] = inner
        elif _number(v):
            out[k] = round(v, 4) if isinstance(v, float) else v
    return out


def _number(v: Any) -> bool:
    return (
        isinstance(v, int | float)
        and not isinstance(v, bool)
        and not (isinstance(v, float) and math.isnan(v))
    )


def write(root: Path, stats: StageStats, headline: str = "") -> None:
    """The evidence file, and the headline file when the stage has a headline function; under ``accelerate
    launch`` only the main process writes."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if headline:
        stats.headline = headline_of(headline, stats.detail)
        write_json(headline_path(root, stats.stage), stats.headline)
    write_json(evidence_path(root, stats.stage, stats.item), stats.evidence())


def read(root: Path, stage: str, item: str = "") -> dict[str, Any]:
    """A stage's evidence in the layout, or {} when it has not run."""
    path = evidence_path(root, stage, item)
    return read_json(path) if path.is_file() else {}


def read_headline(root: Path, stage: str) -> dict[str, Any]:
    """A stage's headline numbers (its DVC metrics file), or {}."""
    path = headline_path(root, stage)
    return read_json(path) if path.is_file() else {}


def detail(root: Path, stage: str, item: str = "") -> dict[str, Any]:
    """The stage-specific part of a stage's evidence (what its entry returned), or {}."""
    return read(root, stage, item).get("detail", {})


def leaves(value: Any) -> int:
    """The columns ``dvc exp show`` makes of a metrics file: one per scalar leaf."""
    if isinstance(value, dict):
        return sum(leaves(v) for v in value.values())
    if isinstance(value, list):
        return sum(leaves(v) for v in value) if value else 1
    return 1


def attach(error: BaseException, record: dict[str, Any]) -> BaseException:
    """``raise attach(RecordError(...), record)``: a stage that fails after counting what it read still gets its
    evidence written (by ``vital.stage.call``), so the listed problems are there to read."""
    error.record = record  # type: ignore[attr-defined]
    return error


@contextmanager
def keeping(record: dict[str, Any]) -> Iterator[None]:
    """``with keeping(record): check...``: an error raised inside carries ``record`` (see ``attach``)."""
    try:
        yield
    except Exception as e:
        attach(e, record)
        raise
