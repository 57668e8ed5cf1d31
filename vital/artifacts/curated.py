"""The curated sets (``artifacts/curated/<name>.json``, the bakeoff's subsets)."""

from __future__ import annotations

from pathlib import Path

from vital.io import RecordError, read_json


def read_curated(path: Path) -> list[dict]:
    """A curated set: a JSON list of LLaVA records (curate, bakeoff subsets; read by tune and export).

    It is written whole by one stage, so any problem is fatal, naming the file: missing, not JSON, not a
    list, or records that are not JSON objects (their indices)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: curated set not found (run the curate stage first: dvc repro curate)"
        )
    data = read_json(path)
    if not isinstance(data, list):
        raise RecordError(f"{path}: expected a JSON list of LLaVA records, got {type(data).__name__}")
    bad = [i for i, r in enumerate(data) if not isinstance(r, dict)]
    if bad:
        raise RecordError(f"{path}: records {bad[:5]} are not JSON objects")
    return data
