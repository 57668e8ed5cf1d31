"""`vital lineage --check` on a real DVC repo whose curate stage writes a folder and whose tune stage reads one
file inside it (as the demo's `artifacts/curated/top40.json`), rerun after a change upstream; and a missing or
corrupt MLflow store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.dvc_toy import env, sh

CURATE = """import pathlib, yaml
seed = yaml.safe_load(open("params.yaml"))["curate"]["seed"]
out = pathlib.Path("artifacts/curated")
out.mkdir(parents=True, exist_ok=True)
for k in (10, 40):
    (out / f"top{k}.json").write_text(f'{{"k": {k}, "seed": {seed}}}\\n')
"""
TUNE = """import pathlib, yaml
from vital.lineage import log_tune
from vital.params import MlflowParams
params = yaml.safe_load(open("params.yaml"))
o = pathlib.Path("models/tuned")
o.mkdir(parents=True, exist_ok=True)
(o / "weights.txt").write_text(pathlib.Path("artifacts/curated/top40.json").read_text())
log_tune(params["tune"], {"final_loss": 0.5}, {"curated": "artifacts/curated/top40.json"}, o,
         MlflowParams(**params["mlflow"]))
"""


@pytest.fixture(scope="module")
def rerun(tmp_path_factory):
    """The pipeline run once, then curate's param changed and the pipeline rerun: tune's lock entry for the
    file held the first run's digest while the second tune ran."""
    root = tmp_path_factory.mktemp("check") / "repo"
    root.mkdir()
    e = env(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}", PYTHONPATH=str(Path(__file__).parents[1]))
    sh(root, "git", "init", "-q", "-b", "main", environ=e)
    sh(root, "dvc", "init", "-q", environ=e)
    (root / "curate.py").write_text(CURATE)
    (root / "tune.py").write_text(TUNE)
    stages = {
        "curate": {"cmd": "python curate.py", "deps": ["curate.py"], "params": ["curate"],
                   "outs": ["artifacts/curated"]},
        "tune": {"cmd": "python tune.py", "deps": ["tune.py", "artifacts/curated/top40.json"],
                 "params": ["tune"], "outs": ["models/tuned"]},
    }  # fmt: skip
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    params = {"curate": {"seed": 0}, "tune": {"seed": 0}}
    params["mlflow"] = {"experiment": "vital", "registered_model": "vital-llava", "enabled": True}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / ".gitignore").write_text("/mlflow.db\n/mlruns/\n")
    sh(root, "git", "add", "-A", environ=e)
    sh(root, "git", "commit", "-qm", "the pipeline", environ=e)
    sh(root, "dvc", "repro", "-q", environ=e)
    params["curate"]["seed"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    sh(root, "dvc", "repro", "-q", environ=e)
    sh(root, "git", "add", "-A", environ=e)
    sh(root, "git", "commit", "-qm", "rerun", environ=e)
    return root, e


def _vital(root: Path, e: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vital.cli", *args], cwd=root, env=e, capture_output=True, text=True
    )


def test_an_untouched_rerun_checks_clean_with_the_file_digest_from_its_producer(rerun):
    root, e = rerun
    out = _vital(root, e, "lineage", "vital-llava@2", "--check")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "top40.json" in out.stdout and "changed" not in out.stdout
    (root / "artifacts" / "curated" / "top40.json").write_text("edited\n")  # a real change is still found
    try:
        out = _vital(root, e, "lineage", "vital-llava@2", "--check")
        assert out.returncode == 1 and "artifacts/curated/top40.json" in out.stdout
    finally:
        sh(root, "dvc", "checkout", "-q", "--force", environ=e)


def test_a_deleted_store_is_named_and_not_recreated(rerun, tmp_path):
    root, e = rerun
    gone = tmp_path / "mlflow.db"
    out = _vital(root, dict(e, MLFLOW_TRACKING_URI=f"sqlite:///{gone}"), "lineage", "vital-llava", "--check")
    assert out.returncode == 2 and str(gone) in out.stderr and "no MLflow tracking store" in out.stderr
    assert not gone.exists()


def test_a_corrupt_store_is_one_line(rerun, tmp_path):
    root, e = rerun
    bad = tmp_path / "mlflow.db"
    bad.write_bytes(b"not a database at all" * 100)
    out = _vital(root, dict(e, MLFLOW_TRACKING_URI=f"sqlite:///{bad}"), "lineage", "vital-llava")
    assert out.returncode == 2 and str(bad) in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
