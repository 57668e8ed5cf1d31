"""Stale is said: DVC's own status decides whether a result is the code and params in force's (issue 22)."""

from __future__ import annotations

from tests.dvc_toy import make_repo, sh
from vital import stats
from vital.freshness import check, refresh_command
from vital.paths import Paths
from vital.report import pr_report, summary


def test_a_changed_param_makes_its_stage_and_everything_downstream_stale(tmp_path):
    repo = make_repo(tmp_path / "repo")
    sh(repo, "dvc", "repro", "-q")
    fresh = check(repo)
    assert fresh.stale == {} and fresh.unknown == {}
    assert fresh.of("evaluate") is None

    (repo / "params.yaml").write_text("train:\n  weight: 2.0\n")
    fresh = check(repo)
    assert set(fresh.stale) == {"train", "evaluate"}  # prepare is untouched
    assert "upstream stage train" in fresh.stale["evaluate"]
    assert fresh.of("evaluate").startswith("stale:") and "`dvc repro evaluate`" in fresh.of("evaluate")

    sh(repo, "dvc", "repro", "-q")
    assert check(repo).stale == {}


def test_a_fresh_clone_is_judged_by_the_lock(tmp_path):
    """Outputs not pulled: a stage is current when it ran on what its producer last locked, and stale when
    its producer reran after it (the state `make demo` leaves the stages it does not run in)."""
    repo = make_repo(tmp_path / "repo")
    sh(repo, "dvc", "repro", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "run")
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))  # outputs are in no remote: not pulled
    fresh = check(clone)
    assert fresh.stale == {} and fresh.unknown == {}

    (repo / "data" / "raw.txt").write_text("zeta eta theta\n")
    sh(repo, "dvc", "add", "-q", "data")
    sh(repo, "dvc", "repro", "-q", "prepare")  # prepare reruns; train and evaluate are not rerun
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "prepare only")
    sh(clone, "git", "pull", "-q")
    fresh = check(clone)
    assert "prepare" not in fresh.stale
    assert "ran on an older artifacts/prep.txt" in fresh.stale["train"]
    assert "upstream stage train" in fresh.stale["evaluate"]


def test_summary_marks_a_stale_section_with_the_command_that_refreshes_it(tmp_path):
    paths = Paths(tmp_path)
    detail = {"demo": {"top-s0": {"closed_accuracy": 0.8, "open_recall": 0.5}}}
    stats.write(paths.root, stats.StageStats("evaluate_finetuned", detail=detail))
    from vital.freshness import Freshness

    text = summary(paths, Freshness(stale={"evaluate_finetuned": "models/tuned modified"}, unknown={}))
    assert "stale: models/tuned modified; refresh with `make vqa-finetune`" in text
    assert "!!" not in summary(paths, Freshness(stale={}, unknown={}))
    assert refresh_command("bakeoff_tune@judge-1") == "make bakeoff"


def test_pr_report_calls_a_stale_section_stale_never_unchanged(tmp_path):
    repo = make_repo(tmp_path / "repo")
    ev = {"demo": {"top_over_seeds": {"closed_accuracy": {"mean": 0.5, "std": 0.1, "n": 3}}}}
    stats.write(repo, stats.StageStats("evaluate", detail=ev))
    sh(repo, "dvc", "repro", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "run")
    report = pr_report(repo, "HEAD", mlflow=False)
    assert "unchanged" in report  # same metrics, every stage current
    (repo / "params.yaml").write_text("train:\n  weight: 3.0\n")
    report = pr_report(repo, "HEAD", mlflow=False)
    assert "zero-shot: stale" in report.replace("\\", "") and "unchanged" not in report
