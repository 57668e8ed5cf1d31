"""One rule for a UTF-8 byte order mark in every JSON/JSONL reader: accepted and stripped (at the start of a
file, and at the start of a JSONL line, as files joined with `cat` carry), so a file saved by a Windows editor
reads exactly as the same file without it. Each reader is run on both and must give the same records."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_vqa_loaders import _demo, _qa50, _vqa_rad
from vital.annotate.order import read_scores
from vital.annotate.session import AnnotationSession
from vital.artifacts.sample import read_sample
from vital.artifacts.scores import judge_scores
from vital.artifacts.scores import read_scores as read_artifact_scores
from vital.corpus import json_records, jsonl_lines, reader
from vital.drops import Drops
from vital.io import json_lines, read_json, read_jsonl, read_records
from vital.llm.prompts import load_demonstrations
from vital.schema import FigureRecord
from vital.vqa.loaders import load_set

REPO = Path(__file__).resolve().parents[1]
BOM_BYTES = "\ufeff".encode()
FIGURES = [
    {"pair_id": f"PMC{i}_F1", "pmid": str(i), "fig_caption": f"Axial CT {i}.", "image": f"images/{i}.png"}
    for i in range(3)
]


def _with_bom(path: Path, every_line: bool = False) -> Path:
    """A copy of ``path`` with a BOM at its start (and, for JSONL, at the start of every line)."""
    data = path.read_bytes()
    if every_line:
        data = b"\n".join(BOM_BYTES + line if line.strip() else line for line in data.split(b"\n"))
    else:
        data = BOM_BYTES + data
    out = path.with_name("bom_" + path.name)
    out.write_bytes(data)
    return out


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


JSONL_READERS = {
    "io.read_jsonl": lambda p: list(read_jsonl(p)),
    "io.json_lines": lambda p: [(w.rsplit(":", 1)[1], v, e) for w, v, e in json_lines(p)],
    "io.read_records": lambda p: [(n, r.pair_id) for n, r in read_records(p, FigureRecord, _no_invalid)],
    "corpus.jsonl_lines": lambda p: [(w.rsplit(":", 1)[1], r) for w, r in jsonl_lines(p)],
    "corpus reader vital": lambda p: [(w.rsplit(":", 1)[1], r) for w, r in reader("vital").read(p)],
    "corpus reader llava_med_fig_captions (jsonl)": lambda p: [
        (w.rsplit(":", 1)[1], r) for w, r in reader("llava_med_fig_captions").read(p)
    ],
    "annotate.read_scores": lambda p: read_scores(p, "score", "judge"),
    "artifacts.read_sample": lambda p: list(read_sample(p, _RefusingDrops())),
    "artifacts.read_scores": lambda p: read_artifact_scores(p, _RefusingDrops()),
    "artifacts.judge_scores": lambda p: judge_scores(p, _RefusingDrops()),
}


class _RefusingDrops(Drops):
    def add(self, reason, where="", detail="", **extra):
        raise AssertionError(f"{where}: {reason} ({detail})")


def _no_invalid(where: str, detail: str) -> None:
    raise AssertionError(f"{where}: {detail}")


@pytest.mark.parametrize("every_line", [False, True], ids=["file", "every line"])
@pytest.mark.parametrize("name", sorted(JSONL_READERS))
def test_every_jsonl_reader_strips_a_bom(tmp_path, name, every_line):
    rows = [dict(f, candidate_id=f"{f['pair_id']}#0", score=float(i)) for i, f in enumerate(FIGURES)]
    plain = _jsonl(tmp_path / "records.jsonl", rows)
    read = JSONL_READERS[name]
    expected = read(plain)
    assert expected and read(_with_bom(plain, every_line)) == expected


JSON_READERS = {
    "io.read_json": lambda p: read_json(p),
    "corpus.json_records": lambda p: [(w.split(":", 1)[1], k, r) for w, k, r in json_records(p)],
    "corpus reader llava_med_fig_captions (json)": lambda p: [
        (w.split(":", 1)[1], r) for w, r in reader("llava_med_fig_captions").read(p)
    ],
}


@pytest.mark.parametrize("name", sorted(JSON_READERS))
def test_every_json_reader_strips_a_bom(tmp_path, name):
    plain = tmp_path / "records.json"
    plain.write_text(json.dumps(FIGURES, indent=1), encoding="utf-8")
    read = JSON_READERS[name]
    expected = read(plain)
    assert expected and read(_with_bom(plain)) == expected


@pytest.mark.parametrize(
    ("fmt", "fixture"), [("demo", _demo), ("vqa_rad", _vqa_rad), ("llava_med_qa", _qa50)]
)
def test_vqa_sets_read_the_same_with_a_bom(tmp_path, fmt, fixture):
    path = fixture(tmp_path)
    plain = load_set(fmt, fmt, path, images=_images_of(fmt, path))
    bommed = load_set(fmt, fmt, _with_bom(path), images=_images_of(fmt, path))
    assert plain.items and [i.question_id for i in bommed.items] == [i.question_id for i in plain.items]
    assert bommed.skipped == [] and plain.skipped == []


def _images_of(fmt: str, path: Path) -> Path:
    return {"demo": path.parent, "vqa_rad": path.parent / "VQA_RAD Image Folder"}.get(
        fmt, path.parent / "images"
    )


def test_demonstrations_read_the_same_with_a_bom(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()  # written here: data/ is DVC-tracked and not pulled by `make test`
    demo = {
        "id": "dr_a_ct_01",
        "fig_caption": "Axial CT showing a hypodense lesion in the right hepatic lobe.",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat modality is this?"},
            {"from": "gpt", "value": "An axial CT of the abdomen."},
        ],
    }
    (plain / "ct_scan.json").write_text(json.dumps([demo]))
    (plain / "mri.json").write_text(json.dumps([{**demo, "id": "dr_a_mri_01"}]))
    bommed = tmp_path / "bom"
    bommed.mkdir()
    for f in plain.glob("*.json"):
        (bommed / f.name).write_bytes(BOM_BYTES + f.read_bytes())
    assert load_demonstrations(bommed) == load_demonstrations(plain)


def test_annotation_label_file_reads_the_same_with_a_bom(tmp_path):
    record = {"pair_id": "PMC1_F1", "annotator": "dr_a", "ranking": ["PMC1_F1#1", "PMC1_F1#0"]}
    session = types.SimpleNamespace(label_file=tmp_path / "dr_a.jsonl", annotator="dr_a", digests={})
    line = json.dumps(record).encode() + b"\n"
    assert AnnotationSession._read(session, BOM_BYTES + line + BOM_BYTES + line) == (
        AnnotationSession._read(session, line + line)
    )
    assert AnnotationSession._read(session, BOM_BYTES + line)[0] == {"PMC1_F1": record}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=20) | st.integers(), max_size=4),
        min_size=1,
        max_size=5,
    )
)
def test_any_jsonl_reads_the_same_with_a_bom(tmp_path, rows):
    plain = _jsonl(tmp_path / "rows.jsonl", rows)
    assert list(read_jsonl(_with_bom(plain))) == rows == list(read_jsonl(plain))
