"""The tiny end-to-end pipeline: the real dvc.yaml and stage scripts on a tiny world, in a git + DVC repo.

Building it (a full `dvc repro`) is the most expensive thing the suite does, so it is built once per test run
and shared: tests/conftest.py starts ``python -m tests.tiny_pipeline <dir>`` in the background as soon as a
collected test needs the ``tiny_pipeline`` fixture (the other tests run meanwhile), and each test module that
changes the repo works on its own copy (``copy_of``), so those modules can run on different xdist workers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = {
    "world": {"figures": 150, "vqa_figures": 10, "vqa_train_figures": 20},
    "foundation": {"backend": "demo", "steps": 30, "batch_size": 32},  # tiny: trained here, not restored
    "align": {"backend": "demo", "steps": 20, "batch_size": 16},
    "sample": {"per_domain": 16},
    "labels": {"figures": 40},
    # the head alone and one seed: a residual on the judge may keep the judge's scores whatever the weight,
    # and these tests need a selector change to reach curate and the tunes
    "selector": {"epochs": 5, "judge_input": "none", "seed_repeats": 1},
    # one epoch of the 32 conversations in top40, with a checkpoint half-way
    "tune": {"seeds": [0], "max_steps": 4, "batch_size": 8, "checkpoint_every": 2},
    "finetune": {"max_steps": 3, "batch_size": 8},
}

DONE, FAILED, LOG = "done", "failed", "build.log"  # markers beside the built repo


def _merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        base[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return base


def sh(cwd: Path, *cmd: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
        VITAL_PROGRESS="off",
        MLFLOW_TRACKING_URI=f"sqlite:///{cwd / 'mlflow.db'}",
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
        )
    return out


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w@.-]+)'", output))


def build(root: Path) -> Path:
    """A git + DVC repo holding the tiny world, after a first full `dvc repro`, committed.
    ``first_repro.log`` keeps that repro's output."""
    root.mkdir(parents=True)
    for item in ("dvc.yaml", "stages", "vital"):
        src = REPO / item
        (
            shutil.copytree(src, root / item, ignore=shutil.ignore_patterns("__pycache__"))
            if src.is_dir()
            else shutil.copy(src, root / item)
        )
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # deps for the tiny world's backends (foundation and align trained here, not restored)
    sh(root, "vital", "dag", "--write")
    (root / ".gitignore").write_text("/.vital/\n/mlflow.db\n/mlruns/\n__pycache__/\n")
    sh(root, "git", "init", "-q")
    sh(root, "dvc", "init", "-q")
    sh(root, "vital", "world", "--out", "data")
    sh(root, "dvc", "add", "-q", "data")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "tiny world")
    first = sh(root, "dvc", "repro", timeout=1800)  # 21 stages: slow where many share the cores
    (root / "first_repro.log").write_text(first.stdout + first.stderr)
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "repro")
    return root


def copy_of(built: Path, dest: Path) -> Path:
    """A private copy of the built repo (git, DVC cache, outputs, MLflow db) for a test module to change."""
    shutil.copytree(built, dest, symlinks=True)
    return dest


def build_in_background(root: Path) -> subprocess.Popen:
    """Start building the repo at ``root``; ``root.parent`` gets ``done`` or ``failed`` when it ends."""
    with open(root.parent / LOG, "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.tiny_pipeline", str(root)],
            cwd=REPO,
            stdout=log,
            stderr=log,
            start_new_session=True,  # its own process group, so that an interrupted run can stop all of it
        )


if __name__ == "__main__":
    target = Path(sys.argv[1])
    try:
        build(target)
    except BaseException:
        (target.parent / FAILED).write_text(traceback.format_exc())
        raise
    (target.parent / DONE).touch()
