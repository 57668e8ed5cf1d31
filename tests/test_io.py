"""vital.io: validated JSONL records, invalid lines reported with file and number."""

from __future__ import annotations

from pathlib import Path

from vital.drops import Drops
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
    with f.open("a") as out:
        out.write('{"candidate_id": "F#3", "pair_id"\n')  # a half-written last line
    drops = Drops()
    got = list(read_records(f, Judgment, drops.invalid("invalid_judgment")))
    assert [(i, j.candidate_id) for i, j in got] == [(1, "F#0"), (3, "F#2")]
    m = drops.metrics()
    assert m["dropped"] == 2 and m["dropped_by_reason"] == {"invalid_judgment": 2}
    first, second = m["dropped_examples"]
    assert first["where"] == f"{f}:2" and "score" in first["detail"] and "required" in first["detail"].lower()
    assert second["where"] == f"{f}:4" and "not valid JSON" in second["detail"]
    # without a callback invalid lines are skipped silently
    assert [j.score for _, j in read_records(f, Judgment)] == [7, 3]
