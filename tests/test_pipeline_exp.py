"""`dvc exp run -S` on the tiny pipeline (tests/tiny_pipeline.py), on this module's own copy of the repo."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_pipeline import assert_reran_only_downstream_of_selector
from tests.tiny_pipeline import copy_of, ran_stages, sh

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tiny_pipeline: Path, tmp_path_factory) -> Path:
    return copy_of(tiny_pipeline, tmp_path_factory.mktemp("pipeline_exp") / "repo")


def test_exp_run_sweeps_a_param_beside_the_baseline(repo):
    # 3 is not one of selector.auto_weights, so the head cannot be the one `auto` picked
    out = sh(repo, "dvc", "exp", "run", "-S", "selector.human_weight=3", "-n", "hw3")
    # a sweep over the selector head never recomputes features or regenerates data
    assert_reran_only_downstream_of_selector(ran_stages(out.stdout))
    shown = sh(repo, "dvc", "exp", "show", "--json").stdout
    assert "hw3" in shown and "workspace" in shown
