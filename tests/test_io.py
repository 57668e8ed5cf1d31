"""vital.io: validated JSONL records, invalid lines reported with file and number."""

from __future__ import annotations

from pathlib import Path

from vital.io import read_records, write_jsonl
from vital.schema import Judgment


def test_read_records_skips_and_reports_invalid_lines(tmp_path: Path):
    f = tmp_path / "judgments.jsonl"
    write_jsonl(
        f,
        [
            {"candidate_id": "F#0", "pair_id": "F", "score": 7},
            {"candidate_id": "F#1", "pair_id": "F"},  # no score
            {"candidate_id": "F#2", "pair_id": "F", "score": 3},
        ],
    )
    bad: list[str] = []
    got = list(read_records(f, Judgment, bad.append))
    assert [(i, j.candidate_id) for i, j in got] == [(1, "F#0"), (3, "F#2")]
    assert len(bad) == 1 and bad[0].startswith(f"{f}:2: ") and "required" in bad[0].lower()
    # without a callback invalid lines are skipped silently
    assert [j.score for _, j in read_records(f, Judgment)] == [7, 3]
