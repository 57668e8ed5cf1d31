"""A small real DVC pipeline in a temp dir, for the team-workflow tests (remotes, shared experiments, reports).

Three plain-python stages, so a whole `dvc repro` takes about a second:

    data/raw.txt (data.dvc) -> prepare -> artifacts/prep.txt -> train -> models/model.json -> evaluate
                                                                                    metrics/eval.json, metrics/curve.csv

Every stage appends a line to ``<repo>/../runs.log`` (outside the repo, so DVC never sees it): a test reads
it to tell which commands really ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PREPARE = """import pathlib
lines = pathlib.Path("data/raw.txt").read_text().split()
pathlib.Path("artifacts").mkdir(exist_ok=True)
pathlib.Path("artifacts/prep.txt").write_text("\\n".join(sorted(lines)) + "\\n")
with open("../runs.log", "a") as f:
    f.write("prepare\\n")
"""

TRAIN = """import json, pathlib, yaml
w = yaml.safe_load(open("params.yaml"))["train"]["weight"]
words = pathlib.Path("artifacts/prep.txt").read_text().split()
pathlib.Path("models").mkdir(exist_ok=True)
model = {"weight": w, "scores": {x: round(w * len(x) / 7, 6) for x in words}}
pathlib.Path("models/model.json").write_text(json.dumps(model, sort_keys=True))
with open("../runs.log", "a") as f:
    f.write("train\\n")
"""

EVALUATE = """import json, pathlib
m = json.loads(pathlib.Path("models/model.json").read_text())
s = sorted(m["scores"].values())
pathlib.Path("metrics").mkdir(exist_ok=True)
pathlib.Path("metrics/eval.json").write_text(json.dumps({"mean": round(sum(s) / len(s), 6), "max": s[-1]}))
rows = "".join(f"{i},{v}\\n" for i, v in enumerate(s))
pathlib.Path("metrics/curve.csv").write_text("step,score\\n" + rows)
with open("../runs.log", "a") as f:
    f.write("evaluate\\n")
"""

DVC_YAML = """stages:
  prepare:
    cmd: python prepare.py
    deps: [prepare.py, data/raw.txt]
    outs: [artifacts/prep.txt]
  train:
    cmd: python train.py
    deps: [train.py, artifacts/prep.txt]
    params: [train.weight]
    outs: [models/model.json]
  evaluate:
    cmd: python evaluate.py
    deps: [evaluate.py, models/model.json]
    metrics:
      - metrics/eval.json:
          cache: false
    plots:
      - metrics/curve.csv:
          cache: false
          x: step
          y: score
"""


def env(**extra: str) -> dict[str, str]:
    """The environment for git and dvc in a test repo: a fixed identity, no analytics, no user config."""
    e = dict(os.environ)
    e.update(
        GIT_AUTHOR_NAME="Test",
        GIT_AUTHOR_EMAIL="test@example.org",
        GIT_COMMITTER_NAME="Test",
        GIT_COMMITTER_EMAIL="test@example.org",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
        DVC_NO_ANALYTICS="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}",
    )
    e.update(extra)
    return e


def sh(cwd: Path, *args: str, environ: dict[str, str] | None = None) -> str:
    """Run a command in ``cwd``; on failure raise with its output (a test then shows what dvc said)."""
    proc = subprocess.run(args, cwd=cwd, env=environ or env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({proc.returncode}) in {cwd}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc.stdout + proc.stderr


def make_repo(root: Path, weight: float = 1.0, words: str = "alpha beta gamma delta epsilon") -> Path:
    """A git + DVC repo at ``root`` with the raw data added (``data.dvc``) and the pipeline declared."""
    root.mkdir(parents=True)
    sh(root, "git", "init", "-q", "-b", "main")
    sh(root, "dvc", "init", "-q")
    sh(root, "dvc", "config", "core.autostage", "true")
    (root / "prepare.py").write_text(PREPARE)
    (root / "train.py").write_text(TRAIN)
    (root / "evaluate.py").write_text(EVALUATE)
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params.yaml").write_text(f"train:\n  weight: {weight}\n")
    (root / "data").mkdir()
    (root / "data" / "raw.txt").write_text(words + "\n")
    sh(root, "dvc", "add", "-q", "data")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "toy pipeline")
    return root


def runs(root: Path) -> list[str]:
    """Which stage commands ran since the log was last cleared (see the module docstring)."""
    log = root.parent / "runs.log"
    return log.read_text().split() if log.is_file() else []


def clear_runs(root: Path) -> None:
    (root.parent / "runs.log").unlink(missing_ok=True)


def metrics(root: Path) -> dict:
    return json.loads((root / "metrics" / "eval.json").read_text())
