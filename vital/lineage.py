"""MLflow lineage for every model-producing stage: params, metrics, git commit, the DVC digests of its inputs.

Each model (foundation CLIP, selector, tuned and fine-tuned LLaVA) gets one MLflow run. Its direct inputs
and everything upstream of them in ``dvc.lock`` (selector, labels, judgments, sample, corpus, ...) are
logged as MLflow dataset inputs whose digest is the DVC md5 and whose source is the path (with, as an input
tag, the object's URL in the default DVC remote), and the model is registered with those digests as tags,
so a registered model version leads back to the exact files that made it: ``vital lineage <model>``
prints that chain and says where the workspace no longer matches it.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vital import dvc_repo
from vital.dvc_repo import Lock, cached_file_md5, default_remote, dir_md5, file_md5, remote_object
from vital.gitrepo import git_commit
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
    """Outputs (with md5) and dependencies of every stage in the dvc.lock files, plus ``*.dvc`` raw data."""
    lock = Lock.read(root)
    outs: dict[str, tuple[str | None, str | None, str]] = {
        path: (name, md5, stage.lock_file)
        for name, stage in lock.stages.items()
        for path, md5 in stage.outs.items()
    }
    outs |= {path: (None, md5, dvc_file) for path, (md5, dvc_file) in lock.raw.items()}
    deps = {name: list(stage.deps) for name, stage in lock.stages.items()}
    dep_md5 = {path: md5 for stage in lock.stages.values() for path, md5 in stage.deps.items() if md5}
    return DvcGraph(outs, deps, dep_md5)


def _owner(path: str, graph: DvcGraph) -> str | None:
    """The DVC output equal to ``path`` or containing it."""
    best = None
    for out in graph.outs:
        if (path == out or path.startswith(out + "/")) and (best is None or len(out) > len(best)):
            best = out
    return best


def _digest(path: str, root: Path, graph: DvcGraph) -> Artifact:
    if path in graph.outs:
        stage, md5, source = graph.outs[path]
        return Artifact(path, md5, source, stage)
    owner = _owner(path, graph)
    stage = graph.outs[owner][0] if owner else None
    # A file inside an output folder: its digest comes from the producing stage's entry (the folder's
    # manifest), never from a consumer's entry, which holds the file as it was when that consumer last ran.
    if owner:
        md5 = cached_file_md5(root, graph.outs[owner][1], path[len(owner) + 1 :])
        if md5:
            return Artifact(path, md5, graph.outs[owner][2], stage)
    full = root / path
    if owner and full.is_file():
        return Artifact(path, file_md5(full), "computed", stage)
    if path in graph.dep_md5:
        return Artifact(path, graph.dep_md5[path], "dvc.lock", stage)
    if full.is_file():
        return Artifact(path, file_md5(full), "computed", stage)
    if full.is_dir():
        return Artifact(path, dir_md5(full), "computed", None)
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
    remote = default_remote(root)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params(flatten(params))
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)})
        mlflow.set_tags({k: v for k, v in tags.items() if not k.startswith("dvc.")})
        for art in arts:
            role = direct.get(art.path) or art.stage or "raw"
            input_tags = {
                "digest_source": art.source,
                "dvc_stage": art.stage or "",
                "direct": str(art.path in direct),
            }
            if art.source.endswith((".dvc", "dvc.lock")):
                input_tags["dvc_remote_url"] = remote_object(remote, art.md5) or ""
            mlflow.log_input(_dataset_input(art, root), context=role, tags=input_tags)
        client = MlflowClient()
        try:
            client.get_registered_model(mp.registered_model)
        except mlflow.exceptions.MlflowException:
            client.create_registered_model(mp.registered_model)
        version = client.create_model_version(
            mp.registered_model,
            # relative to the repository (as dvc.lock names it), so a clone elsewhere still finds it
            source=_norm(Path(model_dir).resolve(), root),
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
            **{
                t.key: t.value
                for t in i.tags
                if t.key in ("digest_source", "dvc_stage", "dvc_remote_url", "direct")
            },
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


def log_stage(
    stage: str,
    params: dict[str, Any],
    metrics: dict[str, Any],
    inputs: dict[str, str | Path | None],
    model_dir: Path,
    root: Path = Path("."),
    tags: dict[str, str] | None = None,
    mlflow: MlflowParams | None = None,
) -> dict[str, Any] | None:
    """For a stage's library ``run`` function (foundation, select): one MLflow run, the model registered as
    ``<mlflow.experiment>-<stage>`` (``vital-foundation``, ``vital-select``) with its inputs' digests
    (``tags``: e.g. the hub commits it was made from).

    ``mlflow`` is the ``mlflow`` section of the params in force (the stage's ``--params`` file); without it
    (a library call outside a stage, a unit test) or with ``enabled: false`` nothing is logged. Returns the
    ``log_tune`` record, or None.
    """
    if mlflow is None or not mlflow.enabled or not _main_process():
        return None
    return log_tune(
        params,
        metrics,
        inputs,
        model_dir,
        mlflow.model_copy(update={"registered_model": f"{mlflow.experiment}-{stage}"}),
        root,
        run_name=stage,
        tags={"vital.stage": stage, **(tags or {})},
    )


def _main_process() -> bool:
    """Under ``accelerate launch`` only rank 0 logs (the same test as the tune stage's)."""
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def resolve_version(spec: str, root: Path = Path(".")) -> tuple[str, str]:
    """``name`` (its latest version) or ``name@version`` -> (name, version); a clear error if unknown."""
    import mlflow
    from mlflow import MlflowClient

    name, _, version = spec.partition("@")
    uri = tracking_uri(root)
    db = uri.removeprefix("sqlite:///")
    if uri.startswith("sqlite:///") and not Path(db).is_file():
        # MLflow would create an empty store here and report no models: the store itself is what is missing
        raise LookupError(
            f"{db}: no MLflow tracking store (deleted, or the models were logged elsewhere: "
            "set MLFLOW_TRACKING_URI to their store)"
        )
    mlflow.set_tracking_uri(uri)
    try:
        client = MlflowClient()
        versions = client.search_model_versions(f"name='{name}'")
    except mlflow.exceptions.MlflowException as e:
        raise LookupError(f"{uri}: cannot read registered model {name!r}: {_first_line(e)}") from None
    except Exception as e:  # a corrupt store: SQLAlchemy or sqlite3 errors, not MlflowException
        raise LookupError(
            f"{db}: not a readable MLflow tracking store ({type(e).__name__}: {_first_line(e)})"
        ) from None
    known = sorted((int(v.version) for v in versions), reverse=True)
    if not known:
        names = sorted(m.name for m in client.search_registered_models())
        raise LookupError(
            f"{tracking_uri(root)}: no registered model {name!r} (registered: {', '.join(names) or 'none'})"
        )
    if not version:
        return name, str(known[0])
    if not version.isdigit() or int(version) not in known:
        raise LookupError(f"{name}: no version {version!r} (versions: {', '.join(map(str, sorted(known)))})")
    return name, version


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def workspace_state(paths: list[str], root: Path = Path(".")) -> dict[str, str]:
    """What ``dvc status`` says of each path (or the DVC output holding it): ``modified``, ``deleted``, ...;
    paths it does not name are absent. Empty outside a DVC repo."""
    try:
        # outputs only: a stale consumer's "changed deps" says the consumer needs a rerun, not that the
        # artifact itself differs from what the model was made from
        changed = dvc_repo.status(root).changed_outs()
    except Exception:  # not a DVC repo, or no dvc.yaml: nothing to compare with
        return {}
    out = {}
    for p in paths:
        hit = next((c for c in changed if p == c or p.startswith(c + "/") or c.startswith(p + "/")), None)
        if hit:
            out[p] = changed[hit] if hit == p else f"{changed[hit]} ({hit})"
    return out


def trace(spec: str, root: Path = Path(".")) -> dict[str, Any]:
    """The chain behind a registered model version: its logged inputs (digests as recorded when the model was
    made), nested by producing stage as ``dvc.lock`` links them, each compared with the workspace now."""
    root = Path(root)
    name, version = resolve_version(spec, root)
    back = walk_back(name, version, root)
    graph = read_dvc_graph(root)
    logged = {i["path"]: i for i in back["inputs"]}
    state = workspace_state(list(logged), root)
    nodes: dict[str, dict[str, Any]] = {}
    for path, rec in logged.items():
        now = _digest(path, root, graph)
        if now.md5 is None:
            status = "missing from the workspace"
        elif rec["md5"] not in ("missing", (now.md5 or "")[:36]):
            status = f"changed: {now.source} now has {now.md5}"
        elif path in state:
            status = f"workspace {state[path]} (dvc status)"
        elif (root / path).is_file() and rec["md5"] != "missing" and file_md5(root / path) != rec["md5"]:
            status = "workspace modified (md5 differs)"
        else:
            status = "ok"
        owner = _owner(path, graph)
        raw = bool(owner) and graph.outs[owner][2].endswith(".dvc")  # inside data tracked by a .dvc file
        nodes[path] = {**rec, "stage": rec.get("dvc_stage") or now.stage, "status": status, "raw": raw}
    # the model's direct inputs head the tree; under each artifact: the DVC output holding it and, for an
    # output, the dependencies of the stage that produced it
    roots = [p for p, n in nodes.items() if n.get("direct") == "True"]
    children: dict[str, list[str]] = {}
    for path, node in nodes.items():
        owner = _owner(path, graph)
        kids = [owner] if owner and owner != path and owner in nodes else []
        if node["stage"] and owner == path:
            kids += [d for d in graph.deps.get(node["stage"], []) if d in nodes and d != path]
        children[path] = list(dict.fromkeys(kids))
    return {
        "name": name,
        "version": version,
        "run_id": back["run_id"],
        "source": back["source"],
        "git_commit": back["tags"].get("git_commit"),
        "git_dirty": back["tags"].get("git_dirty"),
        "nodes": nodes,
        "roots": roots,
        "children": children,
        "mismatches": sorted(p for p, n in nodes.items() if n["status"] != "ok"),
    }


def format_trace(t: dict[str, Any], everything: bool = False) -> str:
    """``vital lineage``'s text: a tree from the model down to the raw data, one artifact per line.

    Without ``everything``, code files and metrics (deps and outputs that are not data or models) are left
    out unless they no longer match; every mismatch is listed at the end either way."""
    commit = (t["git_commit"] or "unknown")[:12] + (" (dirty)" if t["git_dirty"] == "True" else "")
    lines = [
        f"{t['name']} version {t['version']}: {t['source']}",
        f"  MLflow run {t['run_id']}, git {commit}",
    ]
    shown: set[str] = set()

    def hidden(path: str) -> bool:
        n = t["nodes"][path]
        side = path.startswith("metrics/") or (not n["stage"] and not n.get("raw"))
        return not everything and side and n["status"] == "ok"

    def walk(path: str, depth: int) -> None:
        if hidden(path):
            return
        n = t["nodes"][path]
        made_by = f"stage {n['stage']}" if n["stage"] else ("raw data" if n.get("raw") else "file")
        again = " (see above)" if path in shown else ""
        lines.append(
            f"{'  ' * depth}<- {n['role']}: {path}  md5 {n['md5']}  [{made_by}]  {n['status']}{again}"
        )
        if again:
            return
        shown.add(path)
        for kid in t["children"].get(path, []):
            walk(kid, depth + 1)

    for r in t["roots"]:
        walk(r, 1)
    for path in t["nodes"]:  # logged but not reached through dvc.lock as it is now
        if path not in shown:
            walk(path, 1)
    if not everything:
        lines.insert(2, "  (code files and metrics that still match are left out: --all shows them)")
    if t["mismatches"]:
        lines.append(f"workspace differs from this model's inputs at {len(t['mismatches'])} artifact(s):")
        lines += [f"  {p}: {t['nodes'][p]['status']}" for p in t["mismatches"]]
    else:
        lines.append("workspace matches every input of this model")
    return "\n".join(lines)
