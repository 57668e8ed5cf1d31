"""``vital pretrain``: retrain the demo's foundation + base from scratch, compare with or replace data/pretrained.

Kept apart from vital.demo.pretrained (the restore backend), so that restoring does not depend on training code.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from vital.demo.pretrained import LAYOUT, PRETRAINED, SECTIONS, compare_trees, training_params
from vital.io import write_json
from vital.params import Params
from vital.paths import Paths


def train_from_scratch(params: Params, repo: Path, work: Path) -> Path:
    """Train foundation and align (backend ``demo``) into ``work`` on the repo's data; returns ``work``."""
    from vital.foundation import run as run_foundation
    from vital.llava.align import run_stage as run_align

    work.mkdir(parents=True, exist_ok=True)
    if not (work / "data").exists():
        (work / "data").symlink_to((repo / "data").resolve(), target_is_directory=True)
    trained = params.model_copy(
        update={
            "foundation": params.foundation.model_copy(update={"backend": "demo"}),
            "align": params.align.model_copy(update={"backend": "demo"}),
        }
    )
    paths = Paths(work)
    # the training records, kept as data/pretrained/metrics/<stage>.json (a stage run writes them as evidence)
    write_json(work / "metrics" / LAYOUT["foundation"][2], run_foundation(trained.foundation, paths))
    write_json(work / "metrics" / LAYOUT["align"][2], run_align(trained, paths))
    return work


def stage_into(params: Params, work: Path, store: Path) -> None:
    """Lay a from-scratch run in ``work`` out as ``data/pretrained`` (``store``), replacing what is there."""
    if store.exists():
        shutil.rmtree(store)
    (store / "metrics").mkdir(parents=True)
    for folder, model_dir, metrics_name, curve_name in LAYOUT.values():
        shutil.copytree(work / "models" / model_dir, store / folder)
        shutil.copyfile(work / "metrics" / metrics_name, store / "metrics" / metrics_name)
        shutil.copyfile(work / "metrics" / "plots" / curve_name, store / "metrics" / curve_name)
    record = {s: training_params(getattr(params, s)) for s in SECTIONS}
    (store / "params.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def compare_run(work: Path, store: Path) -> list[str]:
    """A from-scratch run in ``work`` against ``data/pretrained``: models and loss curves, byte for byte."""
    if not store.is_dir():
        return [f"{store}: missing; `dvc pull data.dvc` fetches it, `vital pretrain --write` makes it"]
    problems: list[str] = []
    for folder, model_dir, _, curve_name in LAYOUT.values():
        problems += compare_trees(store / folder, work / "models" / model_dir)
        a, b = store / "metrics" / curve_name, work / "metrics" / "plots" / curve_name
        if a.read_bytes() != b.read_bytes():
            problems.append(f"{b}: bytes differ from {a}")
    return problems


def pretrain(params: Params, repo: Path, write: bool = False, keep: Path | None = None) -> list[str]:
    """Retrain from scratch; compare with data/pretrained (or, with ``write``, replace it). Returns problems."""
    store = repo / PRETRAINED
    with tempfile.TemporaryDirectory(prefix="vital-pretrain-") as tmp:
        work = train_from_scratch(params, repo, keep or Path(tmp))
        if write:
            stage_into(params, work, store)
            return []
        return compare_run(work, store)
