"""`dvc exp run -S` on the tiny pipeline (tests/tiny_pipeline.py), on this module's own copy of the repo."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_pipeline import copy_of, ran_stages, sh

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tiny_pipeline: Path, tmp_path_factory) -> Path:
    return copy_of(tiny_pipeline, tmp_path_factory.mktemp("pipeline_exp") / "repo")


# what the sweep changes reruns, and nothing else: the evaluation's decoding length reaches the two evaluate
# stages (and chat_eval, if their predictions changed). test_pipeline.py has a selector change under `dvc repro`.
SWEEP = "evaluate.max_new_tokens=24"
RERUN = {"evaluate", "evaluate_finetuned"}


def test_exp_run_sweeps_a_param_beside_the_baseline(repo):
    out = sh(repo, "dvc", "exp", "run", "-S", SWEEP, "-n", "tokens24")
    assert RERUN <= ran_stages(out.stdout) <= RERUN | {"chat_eval"}, out.stdout
    shown = sh(repo, "dvc", "exp", "show", "--json").stdout
    assert "tokens24" in shown and "workspace" in shown
    assert "max_new_tokens" in shown and "24" in shown
