"""Image/text encoders: the demo's tiny CLIP (pretrained on the corpus) and loading any open_clip backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vital.foundation.clip import (
    TINY_CLIP,
    build_tiny_clip,
    context_length,
    load_clip,
    register_tiny_clip,
    resolve_backbone,
    save_clip,
    tiny_clip_config,
)
from vital.io import write_curve, write_json
from vital.params import FoundationParams, MlflowParams, Params
from vital.paths import Paths
from vital.registry import Backend, choose

__all__ = [
    "TINY_CLIP",
    "build_tiny_clip",
    "context_length",
    "load_clip",
    "register_tiny_clip",
    "resolve_backbone",
    "run",
    "save_clip",
    "tiny_clip_config",
]


def record_pretrained(fp: FoundationParams, out_dir: Path) -> dict[str, Any]:
    """``backend: pretrained``: nothing is trained; record which checkpoint downstream stages use."""
    from vital.hub import resolve

    hub = resolve("foundation.clip", fp.clip, fp.clip_revision)  # unknown or unreachable: one line, at once
    model_id, checkpoint = resolve_backbone(fp.clip, fp.clip_pretrained)
    record = {"backend": "pretrained", "clip": fp.clip, "open_clip_id": model_id, "checkpoint": checkpoint}
    if hub.repo is not None:
        record["hub"] = hub.record()
    write_json(out_dir / "checkpoint.json", record)
    return record


# each: (fp, paths) -> metrics; writes models/foundation/
BACKENDS: dict[str, Backend] = {
    "demo": Backend("vital.demo.foundation:train_stage", reads=("data/corpus",)),
    "pretrained": Backend("vital.foundation:record_stage"),
    "restore": Backend(
        "vital.demo.pretrained:restore_foundation",
        reads=("data/pretrained/foundation", "data/pretrained/metrics", "data/pretrained/params.json"),
    ),
}


def record_stage(fp: FoundationParams, paths: Paths) -> dict[str, Any]:
    write_curve(paths.plots / "foundation_loss.csv", [])  # dvc.yaml declares it for every backend
    return record_pretrained(fp, paths.foundation / "clip")


def run(fp: FoundationParams, paths: Paths, mlflow: MlflowParams | None = None) -> dict[str, Any]:
    """The foundation stage: writes ``models/foundation/`` and ``metrics/foundation.json``; logs the model to
    MLflow as ``mlflow`` (the params in force) says."""
    metrics = choose(BACKENDS, fp.backend, "foundation.backend").load()(fp, paths)
    from vital.lineage import log_stage  # MLflow run + registered `vital-foundation` (in a pipeline repo)

    hub = metrics.get("hub") or {}
    tags = {f"hub.{hub['param']}": f"{hub['repo']}@{hub['commit']}"} if hub else None
    log_stage(
        "foundation",
        fp.model_dump(),
        metrics,
        {"corpus": paths.corpus},
        paths.foundation,
        paths.root,
        tags,
        mlflow,
    )
    return metrics


def run_stage(p: Params, paths: Paths) -> dict[str, Any]:
    return run(p.foundation, paths, p.mlflow)
