"""The git commit a result was made from (read-only git calls)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit(root: Path = Path(".")) -> tuple[str | None, bool]:
    """(HEAD commit, working tree dirty); (None, False) outside a repository."""
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
