"""How long a no-op `dvc repro` takes on vital's pipeline, against DVC's own floor, in one run.

    python bench/dvc_noop.py [--runs 5]

Builds two throwaway git + DVC repos in a temp dir:
- vital: this checkout's dvc.yaml, params.yaml, stages/, vital/ and data/ (run `dvc pull data.dvc` first),
  every stage committed as up to date over placeholder outputs (`dvc commit -f`), so `dvc repro` has
  every dep to hash and every stage to check but nothing to run;
- floor: a 2-stage pipeline (one file in, one out each).
Then times `dvc repro` (no-op) in each, alternating, and prints the medians and their ratio. The YAML
parser matters (DVC parses params.yaml once per stage and dvc.yaml/dvc.lock several times): the report says
whether ruamel.yaml's C extension (ruamel.yaml.clib, a vital dependency) is in use.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def sh(cwd: Path, *cmd: str) -> None:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    env.update(GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@b")
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True)


def vital_repo(root: Path) -> Path:
    from dvc.repo import Repo

    from vital import dag

    if not (REPO / "data" / "corpus" / "figures.jsonl").is_file():
        sys.exit("bench/dvc_noop.py: no demo data here; run `dvc pull data.dvc` first")
    repo = root / "vital"
    repo.mkdir()
    for item in ("dvc.yaml", "params.yaml", ".dvcignore", "stages", "vital", "data"):
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, repo / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, repo / item)
    sh(repo, "git", "init", "-q")
    sh(repo, "dvc", "init", "-q")
    dag.placeholders(repo, real=("stages/", "vital/", "params", "data/"))  # the demo data is real
    with Repo(str(repo)) as r:
        stages = list(r.index.stages)
    sh(repo, "dvc", "commit", "-f", "-q")
    print(f"vital: {len(stages)} stages, dvc.lock {(repo / 'dvc.lock').stat().st_size // 1024} KiB")
    return repo


def floor_repo(root: Path) -> Path:
    repo = root / "floor"
    repo.mkdir()
    (repo / "in.txt").write_text("x\n")
    (repo / "dvc.yaml").write_text(
        "stages:\n"
        "  a: {cmd: cp in.txt a.txt, deps: [in.txt], outs: [a.txt]}\n"
        "  b: {cmd: cp a.txt b.txt, deps: [a.txt], outs: [b.txt]}\n"
    )
    sh(repo, "git", "init", "-q")
    sh(repo, "dvc", "init", "-q")
    sh(repo, "dvc", "repro", "-q")
    return repo


def timed(repo: Path) -> float:
    start = time.perf_counter()
    sh(repo, "dvc", "repro", "-q")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    try:
        import _ruamel_yaml  # noqa: F401  (ruamel.yaml.clib)

        clib = "yes"
    except ImportError:
        clib = "no (pure-Python YAML parsing: slower)"
    with tempfile.TemporaryDirectory() as tmp:
        vital, floor = vital_repo(Path(tmp)), floor_repo(Path(tmp))
        timed(vital), timed(floor)  # warm the OS cache and DVC's state db
        v, f = [], []
        for _ in range(args.runs):
            v.append(timed(vital))
            f.append(timed(floor))
    mv, mf = statistics.median(v), statistics.median(f)
    print(f"ruamel.yaml C extension: {clib}; load average {os.getloadavg()[0]:.1f}")
    print(f"no-op dvc repro, median of {args.runs}: vital {mv:.2f} s, DVC floor (2 stages) {mf:.2f} s")
    print(f"ratio vital / floor: {mv / mf:.2f}")


if __name__ == "__main__":
    main()
