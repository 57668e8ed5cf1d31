"""The demo's pretrained checkpoints: restore them from versioned data, retrain them, check the bytes.

The paper profile starts from published checkpoints (BiomedCLIP, LLaVA). The demo's own "published"
checkpoints are the tiny CLIP + tokenizer (stage foundation, backend ``demo``) and the aligned tiny LLaVA
(stage align, backend ``demo``), kept as data in ``data/pretrained/`` (tracked by data.dvc, stored in the
in-repo DVC remote)::

    data/pretrained/foundation/   what models/foundation holds after training (clip/, tokenizer/)
    data/pretrained/base/         what models/base holds after alignment
    data/pretrained/metrics/      the training metrics and loss curves of that run
    data/pretrained/params.json   the foundation and align params they were trained with

Backend ``restore`` copies them into ``models/`` (byte for byte, so every downstream stage reads the same
bytes as after training). ``vital pretrain`` (vital.demo.pretrain) trains both from scratch into a scratch folder
and compares every file with ``data/pretrained`` (``--write`` replaces them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from vital.dvc_repo import file_md5
from vital.failures import StageFailed
from vital.params import AlignParams, FoundationParams
from vital.paths import Paths

PRETRAINED = Path("data") / "pretrained"
SECTIONS = ("foundation", "align")
# per stage: (model folder under data/pretrained, its models/ folder, metrics file, loss curve)
LAYOUT = {
    "foundation": ("foundation", "foundation", "foundation.json", "foundation_loss.csv"),
    "align": ("base", "base", "align.json", "align_loss.csv"),
}
_NOT_TRAINING = {"backend"}  # params that choose how the checkpoint is obtained, not what it is


def tree_md5(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative posix path -> md5 of its bytes)."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    return {p.relative_to(root).as_posix(): file_md5(p) for p in sorted(root.rglob("*")) if p.is_file()}


def compare_trees(expected: Path, actual: Path) -> list[str]:
    """Differences between two folders, one line each (empty: byte-identical)."""
    a, b = tree_md5(expected), tree_md5(actual)
    out = [f"{actual}/{k}: missing (in {expected})" for k in sorted(a.keys() - b.keys())]
    out += [f"{actual}/{k}: extra (not in {expected})" for k in sorted(b.keys() - a.keys())]
    out += [
        f"{actual}/{k}: bytes differ from {expected}/{k}" for k in sorted(a.keys() & b.keys()) if a[k] != b[k]
    ]
    return out


def training_params(section: FoundationParams | AlignParams) -> dict[str, Any]:
    return {k: v for k, v in section.model_dump(mode="json").items() if k not in _NOT_TRAINING}


def _check_params(stage: str, section: FoundationParams | AlignParams, store: Path) -> None:
    """A stored checkpoint trained with other params than those in force would silently mean other ones."""
    record_file = store / "params.json"
    try:
        stored = json.loads(record_file.read_text())[stage]
    except FileNotFoundError:
        raise StageFailed(
            f"{record_file}: missing; run `make pretrain-update` to train and store checkpoints"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise StageFailed(f"{record_file}: no valid {stage!r} section ({e})") from None
    now = training_params(section)
    for key in sorted(now.keys() | stored.keys()):
        if now.get(key) != stored.get(key):
            raise StageFailed(
                f"{stage}.{key} is {now.get(key)!r} but {store} was trained with {stored.get(key)!r}: "
                f"set {stage}.backend: demo to train here, or `make pretrain-update` to store new checkpoints"
            )


def restore(stage: str, section: FoundationParams | AlignParams, paths: Paths) -> dict[str, Any]:
    """Copy the stored checkpoint of ``stage`` into models/, its loss curve into metrics/plots/."""
    store = paths.root / PRETRAINED
    folder, model_dir, metrics_name, curve_name = LAYOUT[stage]
    _check_params(stage, section, store)
    src, dst = store / folder, paths.root / "models" / model_dir
    if not src.is_dir():
        raise StageFailed(
            f"{src}: missing; `dvc pull data.dvc` fetches it, `make pretrain-update` rebuilds it"
        )
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    paths.plots.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(store / "metrics" / curve_name, paths.plots / curve_name)
    digest = tree_md5(dst)
    trained = json.loads((store / "metrics" / metrics_name).read_text())
    return {
        "backend": "restore",
        "restored_from": (PRETRAINED / folder).as_posix(),
        "files": len(digest),
        "bytes": sum(p.stat().st_size for p in dst.rglob("*") if p.is_file()),
        "trained": trained,
    }


def restore_foundation(fp: FoundationParams, paths: Paths) -> dict[str, Any]:
    """``foundation.backend: restore`` (vital.foundation.BACKENDS)."""
    return restore("foundation", fp, paths)


def restore_base(ap: AlignParams, paths: Paths) -> dict[str, Any]:
    """``align.backend: restore``: models/base and metrics/align.json."""
    metrics = restore("align", ap, paths)
    return metrics
