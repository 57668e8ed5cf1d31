"""Run a measured piece of a bench in a fresh interpreter: its peak RSS is its own, not the harness's."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def child(code: str, *args: str) -> dict:
    """Run ``code`` with ``args``; it prints one JSON object as its last line, which is returned."""
    env = {**os.environ, "VITAL_PROGRESS": "off", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])
