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


def test_every_plot_csv_goes_through_one_writer(tmp_path: Path):
    from vital.io import write_csv, write_curve

    n = write_curve(tmp_path / "a" / "loss.csv", [(1, 2.5), (2, 0.1234567)])
    assert n == 2 and (tmp_path / "a" / "loss.csv").read_bytes() == b"step,loss\n1,2.500000\n2,0.123457\n"
    write_curve(tmp_path / "empty.csv", [])  # a backend that trains nothing still writes the declared curve
    assert (tmp_path / "empty.csv").read_text() == "step,loss\n"
    write_csv(tmp_path / "t.csv", ["set", "note"], [["demo", 'says "hi", twice'], ["x", ""]])
    assert (tmp_path / "t.csv").read_text() == 'set,note\ndemo,"says ""hi"", twice"\nx,\n'
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_no_module_but_io_writes_csv():
    import re

    root = Path(__file__).resolve().parents[1] / "vital"
    writers = [
        p.relative_to(root).as_posix()
        for p in root.rglob("*.py")
        if p.name != "io.py" and re.search(r"csv\.(writer|DictWriter)\(", p.read_text(encoding="utf-8"))
    ]
    assert writers == [], f"{writers} write CSV themselves; use vital.io.write_csv"
