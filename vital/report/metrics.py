"""The one reader of the metrics layout (vital/stats.py) for the reports: a revision's evidence and headline
files, by stage name, in the workspace or at a git revision."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from vital.stats import DETAIL_DIR

# before the layout, a stage's whole record was its metrics file (a base revision of a pull request may be)
LEGACY_FILES = {"bakeoff_evaluate": "metrics/bakeoff_downstream.json"}


def file_at(root: Path, rev: str | None, path: str) -> str | None:
    """A git-tracked file at ``rev`` (None: the workspace); None if it is not there."""
    if rev is None:
        f = Path(root) / path
        return f.read_text() if f.is_file() else None
    proc = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def json_at(root: Path, rev: str | None, path: str) -> dict:
    text = file_at(root, rev, path)
    return json.loads(text) if text else {}


class StageMetrics:
    """What the stages wrote, at one revision (``rev`` None: the workspace)."""

    def __init__(self, root: Path, rev: str | None = None) -> None:
        self.root, self.rev = Path(root), rev

    def evidence(self, stage: str, item: str = "") -> dict[str, Any]:
        """The stage's evidence (the layout's keys), {} when it has not run."""
        found = json_at(self.root, self.rev, f"{DETAIL_DIR}/{f'{stage}/{item}' if item else stage}.json")
        if found or item:
            return found
        legacy = json_at(self.root, self.rev, LEGACY_FILES.get(stage, f"metrics/{stage}.json"))
        return {"stage": stage, "detail": legacy} if legacy else {}

    def detail(self, stage: str, item: str = "") -> dict[str, Any]:
        """What the stage's entry reported beyond the layout's common keys."""
        return self.evidence(stage, item).get("detail", {})
