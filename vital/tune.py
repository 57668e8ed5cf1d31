"""The tune stage: instruction-tune the base LLaVA on one curated subset, one seed; log its lineage.

``vital.llava.tune`` trains; this module says which data, where the model and its metrics go, and
records the run in MLflow.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from vital import lineage
from vital.hub import pinned
from vital.hub import tags as hub_tags
from vital.params import Params
from vital.paths import Paths, is_local, repo_relative


def run_stage(p: Params, paths: Paths, subset: str, seed: int | None = None) -> dict[str, Any]:
    """``models/tuned/<subset>-s<seed>`` from ``artifacts/curated/<subset><tune.keep>.json``."""
    from vital.llava import tune  # torch and peft: not for `vital dag`, which reads base_model below

    tp = p.tune if seed is None else p.tune.model_copy(update={"seed": seed})
    name = f"{subset}-s{tp.seed}"
    data = paths.curated / f"{subset}{tp.keep}.json"
    out = paths.tuned / name
    base, hub = pinned("tune.base", tp.base, tp.base_revision, paths.root)  # the resolved commit's snapshot
    metrics = tune.run(
        base=base,
        data=data,
        image_root=paths.corpus,
        out=out,
        tp=tp,
        checkpoint_dir=paths.root / ".vital" / "checkpoints" / "tune" / f"models_tuned_{name}",
        curve_path=paths.plots / "tune" / f"{name}.csv",
    )
    if hub.repo is not None:
        metrics["hub"] = hub.record()
    if p.mlflow.enabled and tune.is_main_process():
        inputs = {"base": tp.base, "curated": data, "images": paths.corpus / "images"}
        run_name = f"models/tuned/{name}"
        # one registered model per subset and seed, so each tune is addressable on its own
        mp = p.mlflow.model_copy(
            update={"registered_model": registered_name(p.mlflow.registered_model, name)}
        )
        tags = {
            "vital.subset": subset,
            "vital.seed": str(tp.seed),
            "vital.keep": str(tp.keep),
            **hub_tags(hub),
        }
        lineage.log_tune(tp.model_dump(), metrics, inputs, out, mp, paths.root, run_name=run_name, tags=tags)
    return metrics


def registered_name(prefix: str, model: str) -> str:
    """The MLflow registered model of one tune: ``vital-llava-top-s0`` for ``models/tuned/top-s0``."""
    return f"{prefix}-{model}"


def base_model(p: Params, root: Path) -> list[str]:
    """``tune.base`` when it is a local checkpoint (a hub id is not a file DVC can hash)."""
    return [repo_relative(p.tune.base, root)] if is_local(p.tune.base, root) else []


def launcher_files(p: Params, root: Path) -> list[str]:
    """The accelerate config ``tune.launcher`` names (``--config_file X``): it shapes the run, so it is a dep."""
    words = shlex.split(p.tune.launcher or "")
    files = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--config_file"]
    files += [w.split("=", 1)[1] for w in words if w.startswith("--config_file=")]
    return [repo_relative(f, root) for f in files]
