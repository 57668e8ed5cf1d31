"""End to end: the real dvc.yaml and stage scripts on a tiny world, in a temporary git + DVC repo.

Checks what users rely on: a full `dvc repro`, a second one that runs nothing, a param change that
reruns exactly the stages downstream of it, and a bad param that fails naming the key (`dvc exp run -S` is in
test_pipeline_exp.py, on its own copy of the repo, so that it can run on another worker).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.tiny_pipeline import REPO, TINY, _merge, copy_of, ran_stages, sh  # noqa: F401 (imported from here)
from vital import stats

pytestmark = pytest.mark.slow

ALL_STAGES = {
    "foundation",
    "chat_eval",
    "align",
    "sample",
    "fetch",
    "generate",
    "judge",
    "labels",
    "pairs",
    "embed",
    "select",
    "curate",
    "export",
    "bakeoff",
    "tune@top-0",
    "tune@random-0",
    "finetune@top-0",
    "finetune@random-0",
    "finetune_base@0",
    "evaluate",
    "evaluate_finetuned",
}

# A selector change reruns these, and nothing upstream. Not the random-baseline tune (its data does not
# depend on the selector) nor the base's VQA fine-tune. chat_eval reruns only if the predictions it reads changed.
DOWNSTREAM_OF_SELECTOR = {
    "select",
    "curate",
    "export",  # the top subset, and the card records the selector's params
    "bakeoff",
    "tune@top-0",
    "finetune@top-0",
    "evaluate",
    "evaluate_finetuned",
}


def assert_reran_only_downstream_of_selector(ran: set[str]) -> None:
    assert DOWNSTREAM_OF_SELECTOR <= ran <= DOWNSTREAM_OF_SELECTOR | {"chat_eval"}


@pytest.fixture(scope="module")
def repo(tiny_pipeline: Path, tmp_path_factory) -> Path:
    """This module's copy of the tiny pipeline after its first `dvc repro` (tests/tiny_pipeline.py)."""
    return copy_of(tiny_pipeline, tmp_path_factory.mktemp("pipeline") / "repo")


def test_first_repro_runs_every_stage_and_writes_metrics(repo):
    assert ran_stages((repo / "first_repro.log").read_text()) == ALL_STAGES
    for stage in ("generate", "select", "evaluate"):
        assert (repo / "metrics" / f"{stage}.json").exists()
    shown = json.loads(sh(repo, "dvc", "metrics", "show", "--json").stdout)
    flat = json.dumps(shown)
    for name in ("generate.json", "select.json", "evaluate.json"):
        assert name in flat
    # LLaVA-Med's protocol: each model fine-tuned on the train split, scored on the test split
    finetuned = stats.detail(repo, "evaluate_finetuned")["demo"]
    assert {"base-s0", "top-s0", "random-s0", "top_minus_base", "top_minus_random"} <= set(finetuned)
    assert (repo / "models" / "finetuned" / "top-s0" / "demo" / "config.json").is_file()
    assert stats.detail(repo, "finetune", "top-s0")["demo"]["steps"] == TINY["finetune"]["max_steps"]


def _keys(node, found: set[str]) -> set[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            found.add(k)
            _keys(v, found)
    elif isinstance(node, list):
        for v in node:
            _keys(v, found)
    return found


def _sections_with(node, key: str):
    if isinstance(node, dict):
        if key in node:
            yield node
        for v in node.values():
            yield from _sections_with(v, key)


def test_every_stage_reports_time_and_drops_under_the_same_keys(repo):
    files = sorted((repo / "metrics" / "detail").rglob("*.json"))
    assert len(files) >= len(ALL_STAGES) - 2
    for path in files:
        m = json.loads(path.read_text())
        assert tuple(m) == stats.LAYOUT_KEYS and isinstance(m["wall_s"], float), path
        # `trained`: the restored checkpoint's own training record, kept as data in data/pretrained/metrics
        keys = _keys({k: v for k, v in m["detail"].items() if k != "trained"}, set())
        assert not keys & {"wall_s", "wall_seconds", "wall_time_s", "drop_reasons", "by_reason"}, path
        times = [k for k in keys if "wall" in k]
        assert set(times) <= {"train_wall_s", "upstream_wall_seconds", "requests_wall_s"}, path
        for section in _sections_with(m, "dropped"):
            assert {"dropped_by_reason", "dropped_examples"} <= set(section), (path, sorted(section))
    for path in sorted((repo / "metrics" / "plots").rglob("*.csv")):
        assert b"\r" not in path.read_bytes() and path.read_text().split("\n", 1)[0], path


def test_second_repro_runs_nothing(repo):
    out = sh(repo, "dvc", "repro")
    assert ran_stages(out.stdout) == set()
    assert sh(repo, "dvc", "status").stdout.strip().endswith("Data and pipelines are up to date.")


def test_human_weight_change_reruns_exactly_downstream(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    # 7 is not one of selector.auto_weights: were it the weight `auto` picked, the scores would not change
    params["selector"]["human_weight"] = 7
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        out = sh(repo, "dvc", "repro")
        assert_reran_only_downstream_of_selector(ran_stages(out.stdout))
    finally:
        # the baseline back: params, lock and the uncached metrics from git, the cached outputs from DVC
        sh(repo, "git", "checkout", "--", ".")
        sh(repo, "dvc", "checkout", "-q")
    assert ran_stages(sh(repo, "dvc", "repro").stdout) == set()


def test_bad_param_fails_at_stage_start_naming_the_key(repo):
    original = (repo / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["selector"]["human_wieght"] = params["selector"].pop("human_weight")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        out = sh(repo, "python", "stages/selector.py", check=False)
        assert out.returncode != 0
        assert "selector.human_wieght: unknown key" in out.stderr
    finally:
        (repo / "params.yaml").write_text(original)
