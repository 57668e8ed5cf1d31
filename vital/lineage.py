"""MLflow lineage for a tuned model: params, metrics, git commit, and the DVC digests of its inputs.

Each tune gets one MLflow run. Its direct inputs (base model, curated set, images) and everything
upstream of them in ``dvc.lock`` (selector, labels, judgments, sample, corpus, ...) are logged as MLflow
dataset inputs whose digest is the DVC md5, and the model is registered with those digests as tags, so a
registered model version leads back to the exact files that made it.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vital.params import MlflowParams

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


@dataclass(frozen=True)
class Artifact:
    """One input of a model: repo-relative path, its md5, where the digest came from, who produced it."""

    path: str
    md5: str | None
    source: str  # "dvc.lock", "<file>.dvc", "computed", "hub" or "missing"
    stage: str | None = None  # producing DVC stage; None for raw data


def tracking_uri(root: Path = Path(".")) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the repo's ``sqlite:///mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(Path(root) / 'mlflow.db').resolve()}"


def _norm(path: str | Path, root: Path) -> str:
    p = Path(path)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(Path(root).resolve())
        except ValueError:
            return str(p)
    return p.as_posix().strip("/").removeprefix("./")


@dataclass
class DvcGraph:
    outs: dict[str, tuple[str | None, str | None, str]]  # path -> (stage, md5, source)
    deps: dict[str, list[str]]  # stage -> dep paths
    dep_md5: dict[str, str]  # dep path -> md5 recorded when a consuming stage ran


def read_dvc_graph(root: Path) -> DvcGraph:
    """Outputs (with md5) and dependencies of every stage in ``dvc.lock``, plus ``*.dvc`` raw data."""
    root = Path(root)
    outs: dict[str, tuple[str | None, str | None, str]] = {}
    deps: dict[str, list[str]] = {}
    dep_md5: dict[str, str] = {}
    lock = root / "dvc.lock"
    if lock.is_file():
        data = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
        for stage, entry in (data.get("stages") or {}).items():
            deps[stage] = [_norm(d["path"], root) for d in entry.get("deps") or []]
            for d in entry.get("deps") or []:
                if d.get("md5"):
                    dep_md5[_norm(d["path"], root)] = d["md5"]
            for o in entry.get("outs") or []:
                outs[_norm(o["path"], root)] = (stage, o.get("md5"), "dvc.lock")
    for dvc_file in root.glob("*.dvc"):
        if not dvc_file.is_file():  # pathlib's glob matches the .dvc/ folder itself
            continue
        data = yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}
        for o in data.get("outs") or []:
            outs[_norm(o["path"], root)] = (None, o.get("md5"), dvc_file.name)
    return DvcGraph(outs, deps, dep_md5)


def _owner(path: str, graph: DvcGraph) -> str | None:
    """The DVC output equal to ``path`` or containing it."""
    best = None
    for out in graph.outs:
        if (path == out or path.startswith(out + "/")) and (best is None or len(out) > len(best)):
            best = out
    return best


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_md5(path: Path) -> str:
    """md5 over (relative path, file md5) of every file: vital's digest for a directory DVC has not hashed."""
    h = hashlib.md5()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{file_md5(f)}\n".encode())
    return h.hexdigest() + ".dir"


def _digest(path: str, root: Path, graph: DvcGraph) -> Artifact:
    if path in graph.outs:
        stage, md5, source = graph.outs[path]
        return Artifact(path, md5, source, stage)
    owner = _owner(path, graph)
    stage = graph.outs[owner][0] if owner else None
    if path in graph.dep_md5:
        return Artifact(path, graph.dep_md5[path], "dvc.lock", stage)
    full = root / path
    if full.is_file():
        return Artifact(path, file_md5(full), "computed", stage)
    if full.is_dir():
        return Artifact(path, tree_md5(full), "computed", None)
    if path.count("/") == 1 and not path.startswith((".", "/")):
        return Artifact(path, None, "hub", None)  # a Hugging Face hub id: no local digest to take
    return Artifact(path, None, "missing", None)


def lineage(inputs: list[str | Path], root: Path = Path(".")) -> list[Artifact]:
    """The inputs' digests, then every artifact upstream of them in ``dvc.lock`` (each once).

    Upstream means: the DVC output holding an input, all outputs of the stage that produced it, and,
    recursively, that stage's dependencies.
    """
    root = Path(root)
    graph = read_dvc_graph(root)
    seen: dict[str, Artifact] = {}
    queue = [_norm(p, root) for p in inputs]
    while queue:
        path = queue.pop(0)
        if path in seen:
            continue
        art = _digest(path, root, graph)
        seen[path] = art
        owner = _owner(path, graph)
        if owner and owner != path and owner not in seen:
            queue.append(owner)
        stage = graph.outs[owner][0] if owner else None
        if stage is not None:
            # The producing stage's other outputs belong to the lineage too (select -> models/selector).
            queue.extend(o for o, (s, _, _) in graph.outs.items() if s == stage and o not in seen)
            queue.extend(d for d in graph.deps.get(stage, []) if d not in seen)
    return list(seen.values())


def git_commit(root: Path = Path(".")) -> tuple[str | None, bool]:
    """(HEAD commit, working tree dirty) — read-only git calls; (None, False) outside a repository."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        return head, bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        return None, False


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = str(v)[:6000]
    return out


def _dataset_input(art: Artifact, root: Path):
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = resolve_dataset_source((Path(root) / art.path).resolve().as_uri())
    return MetaDataset(source=source, name=art.path, digest=(art.md5 or "missing")[:36])


def tag_key(name: str) -> str:
    """An MLflow tag name: matrix stages (``tune@top-0``) and odd file names carry characters it refuses."""
    return re.sub(r"[^\w\-. :/]", "_", name, flags=re.ASCII)


def log_tune(
    params: dict[str, Any],
    metrics: dict[str, Any],
    inputs: dict[str, str | Path],
    model_dir: Path,
    mp: MlflowParams,
    root: Path = Path("."),
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Record one tune in MLflow and register its model; returns run id, model version and the lineage.

    ``inputs`` maps a role (``base``, ``curated``, ``images``) to a path (None: left out); upstream
    artifacts found in ``dvc.lock`` are added with their producing stage as role. ``tags`` go on the run
    and the model version.
    """
    import mlflow
    from mlflow import MlflowClient

    root = Path(root)
    inputs = {role: path for role, path in inputs.items() if path is not None}
    mlflow.set_tracking_uri(tracking_uri(root))
    mlflow.set_experiment(mp.experiment)
    direct = {_norm(p, root): role for role, p in inputs.items()}
    arts = lineage(list(inputs.values()), root)
    commit, dirty = git_commit(root)
    tags = {"git_commit": commit or "unknown", "git_dirty": str(dirty), **(tags or {})}
    for art in arts:
        role = direct.get(art.path) or art.stage or "raw"
        tags[tag_key(f"dvc.{role}.{art.path}")] = f"{art.md5} ({art.source})"
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params(flatten(params))
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)})
        mlflow.set_tags({k: v for k, v in tags.items() if not k.startswith("dvc.")})
        for art in arts:
            role = direct.get(art.path) or art.stage or "raw"
            mlflow.log_input(_dataset_input(art, root), context=role, tags={"digest_source": art.source})
        client = MlflowClient()
        try:
            client.get_registered_model(mp.registered_model)
        except mlflow.exceptions.MlflowException:
            client.create_registered_model(mp.registered_model)
        version = client.create_model_version(
            mp.registered_model,
            source=str(Path(model_dir).resolve()),
            run_id=run.info.run_id,
            tags={k[:250]: v[:5000] for k, v in tags.items()},
        )
    return {
        "run_id": run.info.run_id,
        "registered_model": mp.registered_model,
        "version": str(version.version),
        "lineage": [a.__dict__ for a in arts],
    }


def walk_back(name: str, version: str | int, root: Path = Path(".")) -> dict[str, Any]:
    """From a registered model version to its run, params and input digests (what ``docs/tuning.md`` shows)."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri(root))
    client = MlflowClient()
    mv = client.get_model_version(name, str(version))
    run = client.get_run(mv.run_id)
    inputs = [
        {
            "path": i.dataset.name,
            "md5": i.dataset.digest,
            "role": next((t.value for t in i.tags if t.key == "mlflow.data.context"), None),
        }
        for i in run.inputs.dataset_inputs
    ]
    return {
        "source": mv.source,
        "run_id": mv.run_id,
        "tags": dict(mv.tags),
        "params": run.data.params,
        "inputs": inputs,
    }
