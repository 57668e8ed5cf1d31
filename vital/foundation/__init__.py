"""Image/text encoders: the demo's tiny CLIP (pretrained on the corpus) and loading any open_clip backbone."""

from __future__ import annotations

import time
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
from vital.io import write_json
from vital.params import FoundationParams
from vital.paths import Paths

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
    model_id, checkpoint = resolve_backbone(fp.clip, fp.clip_pretrained)
    record = {"backend": "pretrained", "clip": fp.clip, "open_clip_id": model_id, "checkpoint": checkpoint}
    write_json(out_dir / "checkpoint.json", record)
    return record


def run(fp: FoundationParams, paths: Paths) -> dict[str, Any]:
    """The foundation stage: writes ``models/foundation/clip/`` and ``metrics/foundation.json``."""
    from vital.foundation.train import train_demo

    start = time.perf_counter()
    out_dir = paths.foundation / "clip"
    if fp.backend == "pretrained":
        metrics = record_pretrained(fp, out_dir)
    else:
        metrics = train_demo(
            fp,
            paths.figures,
            paths.corpus,
            out_dir,
            truth_file=paths.truth,
            curve_csv=paths.plots / "foundation_loss.csv",
            tokenizer_dir=paths.foundation / "tokenizer",
        )
    metrics["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_json(paths.metric("foundation"), metrics)
    from vital.lineage import log_stage  # MLflow run + registered `vital-foundation` (in a pipeline repo)

    log_stage("foundation", fp.model_dump(), metrics, {"corpus": paths.corpus}, paths.foundation, paths.root)
    return metrics
