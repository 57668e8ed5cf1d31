"""Docs run: every ```bash block in README.md and docs/ is executed by a test; a block only to be read is
fenced as ```console (issue 22). docs/paper.md's blocks are the walk-through (tests/test_walkthrough.py);
README's are run here, in a clone of the repository as committed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# the docs whose bash blocks a test executes, and the test that does
RUNNERS = {"README.md": "tests/test_docs_commands.py", "docs/paper.md": "tests/test_walkthrough.py"}


def fenced(path: Path) -> list[tuple[str, int, str]]:
    """(info string, line number, body) of every fenced block."""
    out, text = [], path.read_text(encoding="utf-8")
    for m in re.finditer(r"^```([^\n`]*)\n(.*?)^```", text, flags=re.M | re.S):
        out.append((m.group(1).strip(), text[: m.start()].count("\n") + 1, m.group(2)))
    return out


def test_every_bash_block_is_in_a_doc_that_a_test_executes():
    unrun = []
    for doc in DOCS:
        rel = doc.relative_to(ROOT).as_posix()
        for info, line, _ in fenced(doc):
            if info.split()[:1] == ["bash"] and rel not in RUNNERS:
                unrun.append(f"{rel}:{line}")
    assert unrun == [], f"```bash blocks no test runs (run them, or fence them as ```console): {unrun}"
    for runner in RUNNERS.values():
        assert (ROOT / runner).is_file(), runner


def test_readme_bash_blocks_run_in_a_clone(tmp_path):
    blocks = [(line, body) for info, line, body in fenced(ROOT / "README.md") if info.split()[:1] == ["bash"]]
    assert blocks, "README has no executed block: the reading-results commands belong here"
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for line, body in blocks:
        proc = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", body],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            pytest.fail(
                f"README.md:{line} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            )
        assert "Traceback" not in proc.stderr, f"README.md:{line}:\n{proc.stderr[-2000:]}"
