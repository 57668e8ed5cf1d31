"""The metrics layout (vital/stats.py): run_stage writes every stage's evidence and headline itself, in one
layout, and `dvc exp show` gets the headline numbers alone. Fast: tiny entries and the committed files, no repro."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest
import yaml

from vital import stats
from vital.dag import stage_spec
from vital.failures import StageFailed
from vital.params import Params
from vital.paths import Paths
from vital.pipeline import PIPELINES, STAGES, Option, Stage
from vital.stage import call

REPO = Path(__file__).resolve().parents[1]
# the headline columns of `dvc exp show` over both dvc.yaml files, measured on the committed run
HEADLINE_LEAVES = (
    48  # the positive control's eight: every metric that gates a claim (vital.bakeoff.control.headline)
)


@pytest.fixture
def tiny(monkeypatch):
    """A module ``vital_tiny`` with entries the test rows below point at."""
    module = types.ModuleType("vital_tiny")

    def run(params, paths, **options):
        return {
            "answers": 3,
            "score": 0.123456,
            "per_set": {"a": {"n": 2}},
            "wall_s": 99.0,  # a stage's own clock never wins over run_stage's
            "dropped": 1,
            "dropped_by_reason": {"empty": 1},
            "dropped_examples": [{"where": "x.jsonl:1", "reason": "empty", "detail": ""}],
            "seed": 7,
        }

    def fail(params, paths, **options):
        record = {"answers": 0, "failed": 2, "failed_by_reason": {"refused": 2}}
        raise stats.attach(StageFailed("tiny: every answer refused"), record)

    def headline(detail):
        return {"answers": detail["answers"], "score": detail["score"], "missing": None, "nested": {"n": 1}}

    module.run, module.fail, module.headline = run, fail, headline
    monkeypatch.setitem(sys.modules, "vital_tiny", module)
    return module


def test_run_stage_writes_evidence_and_headline_in_the_layout(tmp_path, tiny):
    paths = Paths(tmp_path)
    row = Stage("tiny", "vital_tiny:run", headline="vital_tiny:headline")
    record = call(row, Params(), paths)
    assert record["answers"] == 3
    evidence = json.loads((tmp_path / "metrics" / "detail" / "tiny.json").read_text())
    assert tuple(evidence) == stats.LAYOUT_KEYS
    assert evidence["stage"] == "tiny" and evidence["item"] == ""
    assert isinstance(evidence["wall_s"], float) and evidence["wall_s"] < 99.0
    assert evidence["wall_s"] == round(evidence["wall_s"], 3)
    assert evidence["dropped"] == 1 and evidence["dropped_by_reason"] == {"empty": 1}
    assert (
        evidence["failed"] == 0 and evidence["failed_by_reason"] == {} and evidence["failed_examples"] == []
    )
    assert evidence["detail"] == {"answers": 3, "score": 0.123456, "per_set": {"a": {"n": 2}}, "seed": 7}
    # the headline: numbers only (None left out), rounded, in the stage's DVC metrics file and the evidence
    headline = json.loads((tmp_path / "metrics" / "tiny.json").read_text())
    assert headline == {"answers": 3, "score": 0.1235, "nested": {"n": 1}} == evidence["headline"]
    assert row.metric_files == ("metrics/tiny.json",)


def test_a_stage_without_headline_writes_only_its_evidence(tmp_path, tiny):
    row = Stage("tiny", "vital_tiny:run")
    call(row, Params(), Paths(tmp_path))
    assert (tmp_path / "metrics" / "detail" / "tiny.json").is_file()
    assert not (tmp_path / "metrics" / "tiny.json").exists() and row.metric_files == ()


def test_foreach_items_write_one_file_each(tmp_path, tiny):
    row = Stage(
        "tiny_tune",
        "vital_tiny:run",
        options=(Option("subset"), Option("seed", int)),
        args="--subset ${item.subset} --seed ${item.seed}",
        matrix=(("subset", "[a]"), ("seed", "[0]")),
        item="{subset}-s{seed}",
    )
    assert row.evidence_file == "metrics/detail/tiny_tune/${item.subset}-s${item.seed}.json"
    call(row, Params(), Paths(tmp_path), subset="top", seed=2)
    call(row, Params(), Paths(tmp_path), subset="top", seed=None)  # no --seed: the seed the record reports
    written = sorted(p.name for p in (tmp_path / "metrics" / "detail" / "tiny_tune").iterdir())
    assert written == ["top-s2.json", "top-s7.json"]
    evidence = stats.read(tmp_path, "tiny_tune", "top-s2")
    assert evidence["item"] == "top-s2" and tuple(evidence) == stats.LAYOUT_KEYS


def test_a_failing_stage_keeps_the_evidence_it_attached(tmp_path, tiny):
    row = Stage("tiny", "vital_tiny:fail", headline="vital_tiny:headline")
    with pytest.raises(StageFailed, match="every answer refused"):
        call(row, Params(), Paths(tmp_path))
    evidence = stats.read(tmp_path, "tiny")
    assert evidence["failed"] == 2 and evidence["failed_by_reason"] == {"refused": 2}
    assert evidence["headline"] == {} and not (tmp_path / "metrics" / "tiny.json").exists()  # no result


def test_only_the_main_process_writes(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("RANK", "1")  # another rank under `accelerate launch`
    call(Stage("tiny", "vital_tiny:run"), Params(), Paths(tmp_path))
    assert not (tmp_path / "metrics").exists()


def _declared(kind: str) -> dict[str, dict]:
    """Every path dvc.yaml files declare under ``kind`` (metrics or outs), with its options."""
    found = {}
    for pipeline in PIPELINES:
        for name, body in yaml.safe_load((REPO / pipeline).read_text())["stages"].items():
            body = body.get("do", body)
            for entry in body.get(kind, []):
                path, opts = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
                found[path] = {"stage": name, **opts}
    return found


def test_every_stage_declares_its_evidence_as_an_uncached_out_and_headline_as_metrics():
    outs, metrics = _declared("outs"), _declared("metrics")
    for name, stage in STAGES.items():
        assert outs[stage.evidence_file] == {"stage": name, "cache": False}, name
        assert stage.evidence_file.startswith(stats.DETAIL_DIR + "/")
        for m in stage.metric_files:
            assert metrics[m] == {"stage": name, "cache": False}, name
        assert stage_spec(stage, Params()).get("metrics", []) == [
            {m: {"cache": False}} for m in stage.metric_files
        ]
    assert set(metrics) == {m for s in STAGES.values() for m in s.metric_files}


def test_committed_evidence_files_follow_the_layout():
    files = sorted((REPO / stats.DETAIL_DIR).rglob("*.json"))
    declared = {re.sub(r"\$\{item[^}]*\}", "*", s.evidence_file) for s in STAGES.values()}
    assert files
    for path in files:
        rel = path.relative_to(REPO).as_posix()
        assert any(Path(rel).match(pattern) for pattern in declared), f"{rel}: no stage declares it"
        evidence = json.loads(path.read_text())
        assert tuple(evidence) == stats.LAYOUT_KEYS, rel
        assert isinstance(evidence["wall_s"], float) and isinstance(evidence["detail"], dict), rel
        assert evidence["dropped"] == sum(evidence["dropped_by_reason"].values()), rel
        assert evidence["failed"] == sum(evidence["failed_by_reason"].values()), rel
        stage = STAGES.get(evidence["stage"]) or STAGES.get(path.parent.name)
        if stage is not None and stage.headline and not evidence["item"]:
            assert stats.headline_of(stage.headline, evidence["detail"]) == evidence["headline"], rel


def test_committed_headline_files_are_the_evidence_headlines_and_few():
    """`dvc exp show` gets one column per leaf of the files declared as `metrics:`: the headline numbers."""
    metrics = _declared("metrics")
    total = 0
    for path, opts in metrics.items():
        headline = json.loads((REPO / path).read_text())
        assert headline == stats.read(REPO, opts["stage"])["headline"], path
        total += stats.leaves(headline)
    assert 0 < total <= HEADLINE_LEAVES, f"{total} headline leaves across {len(metrics)} metrics files"
    # no other JSON directly under metrics/: everything else is evidence in metrics/detail/
    loose = {p.relative_to(REPO).as_posix() for p in (REPO / "metrics").glob("*.json")}
    assert loose == set(metrics)


def test_no_stage_module_keeps_its_own_clock():
    """wall_s is measured by run_stage alone (one clock, one rounding)."""
    offenders = []
    for path in sorted((REPO / "vital").rglob("*.py")):
        # `vital world` and `vital fetch-images` are commands with their own summaries, not stages
        if path.name == "stats.py" or "world" in path.parts or path.as_posix().endswith("fetch/run.py"):
            continue
        text = path.read_text()
        if re.search(r"[\"']wall_s[\"']\s*[:\]]|wall_time_s|failures_by_reason|unjudged_", text):
            offenders.append(path.relative_to(REPO).as_posix())
    assert offenders == []
