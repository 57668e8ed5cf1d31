"""`dvc exp run -S` on the tiny pipeline (tests/tiny_pipeline.py), on this module's own copy of the repo."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_pipeline import copy_of, ran_stages, sh

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tiny_pipeline: Path, tmp_path_factory) -> Path:
    return copy_of(tiny_pipeline, tmp_path_factory.mktemp("pipeline_exp") / "repo")


# what the sweep changes reruns, and nothing else: how chat_eval aggregates the judge's scores reaches chat_eval
# alone. test_pipeline.py has a selector change under `dvc repro`, which reaches the tunes.
SWEEP = "chat_eval.relative=mean_of_ratios"


def test_exp_run_sweeps_a_param_beside_the_baseline(repo):
    out = sh(repo, "dvc", "exp", "run", "-S", SWEEP, "-n", "ratios")
    assert ran_stages(out.stdout) == {"chat_eval"}, out.stdout
    shown = sh(repo, "dvc", "exp", "show", "--json").stdout
    assert "ratios" in shown and "workspace" in shown and "mean_of_ratios" in shown
