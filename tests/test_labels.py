"""labels stage: simulated clinicians and real label files, one Preference format, bad input reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import krippendorff
import pytest

from vital import stats
from vital.demo.template_generator import TemplateGenerator
from vital.io import read_jsonl, write_jsonl
from vital.labels import LabelsError, clinician_agreement, pairwise_agreement, run
from vital.params import LabelsParams, SampleParams, WorldParams
from vital.paths import Paths
from vital.sample import run as run_sample
from vital.schema import Candidate, FigureRecord, Preference
from vital.world import build_world, load_truth


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A tiny project: demo world, a sample of 30 figures, 4 template candidates each."""
    root = tmp_path_factory.mktemp("proj")
    paths = Paths(root)
    build_world(paths.data, WorldParams(figures=50, vqa_figures=5))
    run_sample(paths.figures, paths.sample, paths.metric("sample"), SampleParams(per_domain=6))
    gen = TemplateGenerator(load_truth(paths.truth))
    cands = []
    for raw in read_jsonl(paths.sample):
        rec = FigureRecord.model_validate(raw)
        for k, conv in enumerate(gen.generate(rec, 4)):
            cands.append(
                Candidate(
                    id=f"{rec.pair_id}#{k}",
                    pair_id=rec.pair_id,
                    image=rec.image,
                    domain=rec.primary_domain,
                    conversations=conv,
                )
            )
    write_jsonl(paths.candidates, cands)
    return root


@pytest.fixture
def paths(project, tmp_path) -> Paths:
    """A private copy so tests can add label files freely."""
    shutil.copytree(project, tmp_path / "p")
    return Paths(tmp_path / "p")


def _labels(paths: Paths) -> list[Preference]:
    return [Preference.model_validate(r) for r in read_jsonl(paths.labels)]


def test_simulated_pairwise(paths):
    result = run(LabelsParams(figures=20, per_task=2, clinicians=3, overlap=0.25, seed=0), paths)
    prefs = _labels(paths)
    assert result["tasks"] == 20 and result["labels"] == 25 == len(prefs)
    assert result["overlap_tasks"] == 5
    assert set(result["annotators"]) <= {"clinician_1", "clinician_2", "clinician_3"}
    assert all(len(p.ranking) == 2 and p.source == "simulated" for p in prefs)
    assert all(all(c.startswith(p.pair_id + "#") for c in p.ranking) for p in prefs)
    overlapped = [p for p in prefs if sum(q.pair_id == p.pair_id for q in prefs) == 2]
    assert len({(p.pair_id, p.annotator) for p in overlapped}) == 10  # two different annotators
    assert result["clinician_agreement"]["pairs"] > 0 and result["clinician_agreement"]["figures"] == 5
    assert 0 < result["clinician_agreement"]["krippendorff_alpha"] <= 1
    assert result["agreement_with_truth"] >= 0.8
    assert "wall_s" not in result  # run_stage times the stage
    first = paths.labels.read_bytes()
    run(LabelsParams(figures=20, per_task=2, clinicians=3, overlap=0.25, seed=0), paths)
    assert paths.labels.read_bytes() == first


def test_simulated_ranking_and_single_clinician(paths):
    result = run(LabelsParams(figures=100, per_task=3, clinicians=1, overlap=0.5), paths)
    prefs = _labels(paths)
    assert result["tasks"] == 30 and result["eligible_figures"] == 30  # capped by the sample
    assert result["overlap_tasks"] == 0 and result["annotators"] == {"clinician_1": 30}
    assert all(len(p.ranking) == 3 and len(set(p.ranking)) == 3 for p in prefs)
    result = run(LabelsParams(figures=5, per_task=6), paths)  # only 4 candidates per figure
    assert result["tasks_with_fewer_candidates"] == 5


def _write(paths: Paths, name: str, lines: list) -> Path:
    paths.labels_dir.mkdir(parents=True, exist_ok=True)
    path = paths.labels_dir / name
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def _pids(paths: Paths) -> list[str]:
    return [r["pair_id"] for r in read_jsonl(paths.sample)]


def test_files_backend_reads_real_labels(paths):
    a, b = _pids(paths)[:2]
    _write(
        paths,
        "dr_a.jsonl",
        [
            {"pair_id": a, "annotator": "dr_a", "ranking": [f"{a}#2", f"{a}#0"]},
            {
                "pair_id": b,
                "annotator": "dr_a",
                "ranking": [f"{b}#1", f"{b}#3", f"{b}#0"],
                "ties": [[f"{b}#3", f"{b}#0"]],
            },
        ],
    )
    _write(paths, "dr_b.jsonl", [{"pair_id": a, "annotator": "dr_b", "ranking": [f"{a}#2", f"{a}#0"]}])
    result = run(LabelsParams(backend="files"), paths)
    prefs = _labels(paths)
    assert len(prefs) == 3 and result["dropped"] == 0
    assert result["annotators"] == {"dr_a": 2, "dr_b": 1} and result["overlap_tasks"] == 1
    assert result["clinician_agreement"] == {
        "figures": 1, "annotators": ["dr_a", "dr_b"], "pairs": 1, "agreement": 1.0,
        "krippendorff_alpha": 1.0, "alpha_units": 2,
    }  # fmt: skip
    assert prefs[1].ties == [[f"{b}#3", f"{b}#0"]]


def test_files_backend_reports_bad_lines(paths):
    a, b = _pids(paths)[:2]
    path = _write(
        paths,
        "bad.jsonl",
        [
            {"pair_id": a, "annotator": "x", "ranking": [f"{a}#0", f"{a}#1"]},
            {"pair_id": a, "annotator": "x", "ranking": [f"{a}#0", f"{a}#9"]},
            {"pair_id": a, "annotator": "x", "ranking": [f"{a}#1", f"{a}#1"]},
            {"pair_id": a, "annotator": "x", "ranking": [f"{a}#1"]},
            {"pair_id": a, "annotator": "x", "ranking": [f"{a}#0", f"{b}#1"]},
            {"pair_id": a, "ranking": [f"{a}#0", f"{a}#1"]},
            "{oops",
            {"pair_id": a, "annotator": "x", "ranking": [f"{a}#0", f"{a}#1"]},
            {"pair_id": a, "annotator": "x", "ranking": [f"{a}#2", f"{a}#3"], "ties": [[f"{a}#2", f"{a}#0"]]},
        ],
    )
    empty = _write(paths, "empty.jsonl", [])
    result = run(LabelsParams(backend="files"), paths)
    assert result["labels"] == 1
    assert result["dropped_by_reason"] == {
        "duplicate_candidate": 1, "duplicate_label": 1, "empty_file": 1, "invalid_json": 1, "invalid_record": 1,
        "invalid_ties": 1, "ranking_too_short": 1, "unknown_candidate": 1, "wrong_figure": 1,
    }  # fmt: skip
    problems = {p["reason"]: p for p in result["dropped_examples"]}
    assert (
        problems["unknown_candidate"]["where"] == f"{path}:2"
        and f"{a}#9" in problems["unknown_candidate"]["detail"]
    )
    assert (
        problems["invalid_record"]["where"] == f"{path}:6"
        and "annotator" in problems["invalid_record"]["detail"]
    )
    assert problems["empty_file"]["where"] == str(empty) and result["empty_files"] == [str(empty)]


def test_files_backend_latest_record_per_annotator_and_figure_wins(paths):
    """Label files are append-only: a correction is a later line, and it replaces the earlier ranking."""
    a, b = _pids(paths)[:2]
    first, second = [f"{a}#0", f"{a}#1", f"{a}#2"], [f"{a}#2", f"{a}#1", f"{a}#0"]
    path = _write(
        paths,
        "dr_a.jsonl",
        [
            {"pair_id": a, "annotator": "dr_a", "ranking": first},
            {"pair_id": b, "annotator": "dr_a", "ranking": [f"{b}#0", f"{b}#1"]},
            {"pair_id": a, "annotator": "dr_a", "ranking": second},  # corrected
            {"pair_id": a, "annotator": "dr_a", "ranking": first},  # and corrected back
            {"pair_id": a, "annotator": "dr_a", "ranking": first},  # saved twice: changes nothing
        ],
    )
    _write(paths, "dr_b.jsonl", [{"pair_id": a, "annotator": "dr_b", "ranking": second}])
    result = run(LabelsParams(backend="files"), paths)
    prefs = {(p.annotator, p.pair_id): p.ranking for p in _labels(paths)}
    assert prefs == {("dr_a", a): first, ("dr_a", b): [f"{b}#0", f"{b}#1"], ("dr_b", a): second}
    assert result["labels"] == 3 and result["annotators"] == {"dr_a": 2, "dr_b": 1}
    assert result["superseded"] == {"count": 2, "where": [f"{path}:1", f"{path}:3"]}
    assert result["dropped_by_reason"] == {"duplicate_label": 1}
    # one voice per annotator and figure in the agreement too: dr_a's latest against dr_b
    agreement = result["clinician_agreement"]
    assert agreement["figures"] == 1 and agreement["pairs"] == 3 and agreement["agreement"] == 0.0


def test_files_backend_reports_non_utf8_lines_and_overlapping_ties(paths):
    a = _pids(paths)[0]
    path = _write(paths, "dr_a.jsonl", [{"pair_id": a, "annotator": "dr_a", "ranking": [f"{a}#0", f"{a}#1"]}])
    with path.open("ab") as f:
        f.write(b'{"pair_id": "\xff"}\n')
        tied = [[f"{a}#0", f"{a}#1"], [f"{a}#1", f"{a}#2"]]
        f.write(
            json.dumps(
                {"pair_id": a, "annotator": "dr_b", "ranking": [f"{a}#{k}" for k in range(3)], "ties": tied}
            ).encode()
            + b"\n"
        )
    result = run(LabelsParams(backend="files"), paths)
    assert result["labels"] == 1
    assert result["dropped_by_reason"] == {"invalid_ties": 1, "invalid_utf8": 1}
    problems = {p["reason"]: p for p in result["dropped_examples"]}
    assert problems["invalid_utf8"]["where"] == f"{path}:2" and "0xff" in problems["invalid_utf8"]["detail"]
    assert problems["invalid_ties"]["where"] == f"{path}:3" and f"{a}#1" in problems["invalid_ties"]["detail"]


def test_agreement_between_clinicians_pairwise_and_krippendorff_alpha():
    """Figures ranked by two or more clinicians; alpha from the krippendorff package on rank positions."""

    def pref(pid, who, ranking, ties=()):
        return Preference(pair_id=pid, annotator=who, ranking=ranking, ties=list(ties))

    prefs = [
        pref("f1", "a", ["f1#0", "f1#1", "f1#2"]),
        pref("f1", "b", ["f1#0", "f1#2", "f1#1"]),
        pref("f1", "c", ["f1#0", "f1#1", "f1#2"], [["f1#1", "f1#2"]]),
        pref("f2", "a", ["f2#1", "f2#0"]),
        pref("f2", "b", ["f2#1", "f2#0"]),
        pref("f3", "a", ["f3#0", "f3#1"]),  # one clinician only: not in the agreement
    ]
    result = clinician_agreement(prefs)
    assert result["figures"] == 2 and result["annotators"] == ["a", "b", "c"]
    # f1: a-b agree on 2 of 3 pairs; a-c and b-c on the 2 pairs c did not tie; f2: 1 of 1
    assert result["pairs"] == 3 + 2 + 2 + 1 and result["agreement"] == round(7 / 8, 4)
    nan = float("nan")
    expected = krippendorff.alpha(
        reliability_data=[
            [1, 2, 3, 2, 1],  # a: f1#0 f1#1 f1#2 f2#0 f2#1
            [1, 3, 2, 2, 1],  # b
            [1, 2.5, 2.5, nan, nan],  # c, with its tie at the mean position
        ],
        level_of_measurement="ordinal",
    )
    assert result["krippendorff_alpha"] == round(float(expected), 4) and result["alpha_units"] == 5
    assert 0 < result["krippendorff_alpha"] < 1
    assert clinician_agreement([prefs[0], prefs[5]]) == {
        "figures": 0, "annotators": [], "pairs": 0, "agreement": None, "krippendorff_alpha": None,
        "alpha_units": 0,
    }  # fmt: skip
    reversed_ = clinician_agreement([prefs[0], pref("f1", "b", ["f1#2", "f1#1", "f1#0"])])
    assert reversed_["agreement"] == 0.0 and reversed_["krippendorff_alpha"] < 0


def test_files_backend_clear_errors(paths):
    with pytest.raises(LabelsError, match=r"no \*\.jsonl label files"):
        run(LabelsParams(backend="files"), paths)
    _write(paths, "empty.jsonl", [])
    with pytest.raises(LabelsError, match="no usable preference"):
        run(LabelsParams(backend="files"), paths)
    a = _pids(paths)[0]
    _write(paths, "bad.jsonl", [{"pair_id": a, "annotator": "x", "ranking": [f"{a}#0", "nope#1"]}])
    with pytest.raises(LabelsError, match=r"bad\.jsonl:1: unknown_candidate"):
        run(LabelsParams(backend="files"), paths)


def test_missing_inputs_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="truth.jsonl"):
        run(LabelsParams(), Paths(tmp_path))


def test_pairwise_agreement():
    assert pairwise_agreement(["a", "b", "c"], ["a", "b", "c"]) == (3, 3)
    assert pairwise_agreement(["a", "b", "c"], ["c", "b", "a"]) == (0, 3)
    assert pairwise_agreement(["a", "b"], ["b", "a"], ([["a", "b"]],)) == (0, 0)
    assert pairwise_agreement(["a", "b", "c"], ["b", "x"]) == (0, 0)


def test_stage_script_runs_from_a_project_root(paths):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    (paths.root / "params.yaml").write_text("labels:\n  figures: 5\n  overlap: 0.4\n")
    env = {"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin", "VITAL_PROGRESS": "off"}
    proc = subprocess.run(
        [sys.executable, str(repo / "stages" / "labels.py")],
        cwd=paths.root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(_labels(paths)) == 7 and stats.detail(paths.root, "labels")["overlap_tasks"] == 2
