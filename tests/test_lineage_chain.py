"""`vital lineage` on a test-sized real DVC pipeline: the stages named as vital's, each a few lines of Python,
the select and tune stages logging to MLflow through vital.lineage as the real ones do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.dvc_toy import env, sh
from vital import lineage

# one script for every stage: out = digest of the deps' bytes and the stage's param; select and tune log
STEP = """import hashlib, json, pathlib, sys, yaml
stage, out, *deps = sys.argv[1:]
params = yaml.safe_load(open("params.yaml"))
h = hashlib.md5(json.dumps(params.get(stage, {}), sort_keys=True).encode())
for d in deps:
    p = pathlib.Path(d)
    for f in sorted([p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]):
        h.update(f.read_bytes())
o = pathlib.Path(out)
if o.suffix:
    o.parent.mkdir(parents=True, exist_ok=True)
    o.write_text(h.hexdigest() + "\\n")
else:
    o.mkdir(parents=True, exist_ok=True)
    (o / "weights.txt").write_text(h.hexdigest() + "\\n")
if stage == "select":
    from vital.lineage import log_stage
    from vital.params import MlflowParams
    inputs = {"pairs": "artifacts/pairs.jsonl", "judgments": "artifacts/judgments.jsonl",
              "labels": "artifacts/labels.jsonl"}
    mp = MlflowParams(**params["mlflow"])
    log_stage("select", params["select"], {"agreement": 0.75}, inputs, o, pathlib.Path("."), mlflow=mp)
if stage == "tune":
    from vital.lineage import log_tune
    from vital.params import MlflowParams
    mp = MlflowParams(**params["mlflow"])
    log_tune(params["tune"], {"final_loss": 0.5}, {"curated": "artifacts/curated/top40.json"}, o, mp)
"""

CHAIN = [  # stage, out, deps
    ("sample", "artifacts/sample.jsonl", ["data/corpus"]),
    ("generate", "artifacts/candidates.jsonl", ["artifacts/sample.jsonl"]),
    ("judge", "artifacts/judgments.jsonl", ["artifacts/candidates.jsonl"]),
    ("labels", "artifacts/labels.jsonl", ["artifacts/candidates.jsonl", "artifacts/sample.jsonl"]),
    ("pairs", "artifacts/pairs.jsonl", ["artifacts/judgments.jsonl", "artifacts/labels.jsonl"]),
    (
        "select",
        "models/selector",
        ["artifacts/pairs.jsonl", "artifacts/judgments.jsonl", "artifacts/labels.jsonl"],
    ),
    ("curate", "artifacts/curated/top40.json", ["models/selector", "artifacts/candidates.jsonl"]),
    ("tune", "models/tuned/top-s0", ["artifacts/curated/top40.json"]),
]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain") / "repo"
    root.mkdir()
    e = env(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}", PYTHONPATH=str(Path(__file__).parents[1]))
    sh(root, "git", "init", "-q", "-b", "main", environ=e)
    sh(root, "dvc", "init", "-q", environ=e)
    (root / "step.py").write_text(STEP)
    stages = {
        s: {"cmd": f"python step.py {s} {out} {' '.join(deps)}", "deps": ["step.py", *deps], "outs": [out]}
        for s, out, deps in CHAIN
    }
    for s in stages:
        stages[s]["params"] = [s]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    params = {s: {"seed": 0} for s, _, _ in CHAIN}
    params["mlflow"] = {"experiment": "vital", "registered_model": "vital-llava", "enabled": True}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "data" / "corpus").mkdir(parents=True)
    (root / "data" / "corpus" / "figures.jsonl").write_text('{"pair_id": "a"}\n{"pair_id": "b"}\n')
    (root / ".gitignore").write_text("/mlflow.db\n/mlruns/\n")
    sh(root, "dvc", "add", "-q", "data", environ=e)
    sh(root, "git", "add", "-A", environ=e)
    sh(root, "git", "commit", "-qm", "the pipeline", environ=e)
    sh(root, "dvc", "repro", "-q", environ=e)
    sh(root, "git", "add", "-A", environ=e)
    sh(root, "git", "commit", "-qm", "its results", environ=e)
    return root, e


def _vital(root: Path, e: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vital.cli", *args], cwd=root, env=e, capture_output=True, text=True
    )


def _lock_md5(root: Path) -> dict[str, str]:
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for s in lock["stages"].values() for o in s["outs"]}


def test_lineage_prints_the_chain_from_model_to_corpus_with_dvc_digests(chain, monkeypatch):
    root, e = chain
    out = _vital(root, e, "lineage", "vital-llava")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    print(text)
    md5 = _lock_md5(root)
    for path in [
        "artifacts/curated/top40.json",
        "models/selector",
        "artifacts/pairs.jsonl",
        "artifacts/labels.jsonl",
        "artifacts/judgments.jsonl",
        "artifacts/candidates.jsonl",
        "artifacts/sample.jsonl",
    ]:
        assert f"{path}  md5 {md5[path]}" in text, path
    data_md5 = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
    assert f"data  md5 {data_md5}  [raw data]" in text
    # the chain is a tree in pipeline order: curated set, then the selector under it, ..., corpus deepest
    order = [text.index(p + "  md5") for p in ("top40.json", "models/selector", "artifacts/pairs.jsonl")]
    assert order == sorted(order)
    assert text.splitlines()[0].startswith("vital-llava version 1: ")
    first = sh(root, "git", "rev-parse", "HEAD~1", environ=e).strip()[:12]
    # made inside `dvc repro`, before its results were committed: the pipeline's commit
    assert f"git {first}" in text.splitlines()[1]
    assert "<- raw: data/corpus  md5" in text and "[raw data]" in text
    assert "step.py" not in text  # code deps that still match are left out by default ...
    full = _vital(root, e, "lineage", "vital-llava", "--all").stdout
    assert "<- raw: step.py  md5" in full and "[file]" in full  # ... and shown with --all
    assert "workspace matches every input of this model" in text
    # the selector was registered by the select stage (log_stage): its own chain starts at its inputs
    sel = _vital(root, e, "lineage", "vital-select@1")
    assert sel.returncode == 0, sel.stderr
    assert "<- pairs: artifacts/pairs.jsonl" in sel.stdout and "models/selector  md5" not in sel.stdout
    # the MLflow inputs carry the digest, the path and the default remote's object URL (none here)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", e["MLFLOW_TRACKING_URI"])
    back = lineage.walk_back("vital-llava", 1, root)
    by_path = {i["path"]: i for i in back["inputs"]}
    assert by_path["models/selector"]["md5"] == md5["models/selector"]
    assert by_path["models/selector"]["dvc_stage"] == "select"
    assert by_path["artifacts/curated/top40.json"]["direct"] == "True"


def test_lineage_says_where_the_workspace_no_longer_matches(chain, tmp_path):
    root, e = chain
    work = tmp_path / "work"
    sh(tmp_path, "git", "clone", "-q", str(root), str(work), environ=e)
    sh(work, "dvc", "cache", "dir", str(root / ".dvc" / "cache"), environ=e)
    sh(work, "dvc", "checkout", "-q", environ=e)
    (work / "mlflow.db").write_bytes((root / "mlflow.db").read_bytes())
    w = dict(e, MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}")
    # a teammate changes the labels params and reruns the labels stage only
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["labels"]["seed"] = 1
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    sh(work, "dvc", "repro", "-q", "--single-item", "labels", environ=w)
    (work / "artifacts" / "judgments.jsonl").write_text("edited by hand\n")  # not committed to dvc.lock
    out = _vital(work, w, "lineage", "vital-llava", "--check")
    assert out.returncode == 1, out.stdout + out.stderr
    text = out.stdout
    new = _lock_md5(work)["artifacts/labels.jsonl"]
    assert f"artifacts/labels.jsonl: changed: dvc.lock now has {new}" in text
    assert "artifacts/judgments.jsonl: workspace modified (dvc status)" in text
    assert "artifacts/sample.jsonl: " not in text.split("workspace differs")[1]  # unchanged upstream: ok
    as_json = json.loads(_vital(work, w, "lineage", "vital-llava", "--json").stdout)
    assert "artifacts/labels.jsonl" in as_json["mismatches"]


def test_lineage_names_unknown_models_and_versions(chain):
    root, e = chain
    out = _vital(root, e, "lineage", "no-such-model")
    assert out.returncode == 2 and "no registered model 'no-such-model'" in out.stderr
    assert "vital-llava" in out.stderr  # lists what is registered
    out = _vital(root, e, "lineage", "vital-llava@7")
    assert out.returncode == 2 and "no version '7' (versions: 1)" in out.stderr
