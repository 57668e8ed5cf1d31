"""`vital report --base REV --md`: the pull-request report, on a real commit pair in a git + DVC repo holding
vital's dvc.yaml, params and metrics (the PR changes `selector.human_weight`), and the workflow posting it."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.dvc_toy import env, sh
from vital import stats
from vital.pipeline import STAGES

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "pr-report.yml"


def _edit_evidence(root: Path, stage: str, fn) -> None:
    """Edit what a stage reported, as a rerun would write it: its evidence and its headline."""
    evidence = stats.read(root, stage)
    fn(evidence["detail"])
    run = stats.StageStats.from_record(stage, evidence["detail"], wall_s=evidence["wall_s"])
    stats.write(root, run, STAGES[stage].headline)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Commit A: vital's dvc.yaml, params.yaml and metrics as committed. Commit B: human_weight 1, with the
    select metrics that weight gives (its held-out agreement is in A's own by-weight table), a new selector
    curve and shifted fine-tuned VQA gains."""
    root = tmp_path_factory.mktemp("pr") / "repo"
    root.mkdir()
    e = env(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}", PYTHONPATH=str(REPO))
    sh(root, "git", "init", "-q", "-b", "main", environ=e)
    sh(root, "dvc", "init", "-q", environ=e)
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / f, root / f)
    shutil.copytree(REPO / "metrics", root / "metrics")
    (root / ".gitignore").write_text("/mlflow.db\n/img/\n")
    sh(root, "git", "add", "-A", environ=e)
    sh(root, "git", "commit", "-qm", "base", environ=e)
    base = sh(root, "git", "rev-parse", "HEAD", environ=e).strip()

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["selector"]["human_weight"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def select(m):
        m["human_weight"] = 1
        m.pop("human_weight_auto", None)
        m["heldout_human"]["selector"]["agreement"] = m["heldout_human_agreement_by_weight"]["1"]
        m["heldout_human"]["selector_minus_judge"] = {
            "difference": 0.0206,
            "ci95": [-0.03, 0.07],
            "figures": 155,
        }

    _edit_evidence(root, "select", select)

    def finetuned(m):
        m["demo"]["top_minus_random"]["closed_accuracy"]["mean"] += 0.01

    _edit_evidence(root, "evaluate_finetuned", finetuned)
    curve = root / "metrics" / "plots" / "select_curve.csv"
    lines = curve.read_text().splitlines()
    curve.write_text("\n".join([lines[0], *[f"{r},0.5,0.7" for r in range(1, 6)]]) + "\n")
    sh(root, "git", "commit", "-qam", "selector.human_weight: 1", environ=e)
    head = sh(root, "git", "rev-parse", "HEAD", environ=e).strip()
    return root, e, base, head


def _vital(root: Path, e: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vital.cli", *args], cwd=root, env=e, capture_output=True, text=True
    )


def test_report_for_a_commit_pair_that_changes_human_weight(pair, monkeypatch):
    root, e, base, head = pair
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # a registered model logged from the PR's commit (as the select stage does in CI)
    from vital import lineage

    subprocess.run(
        [
            sys.executable,
            "-c",
            "from vital.lineage import log_tune; from vital.params import MlflowParams;"
            "import pathlib, sys; mp = MlflowParams(registered_model='vital-select');"
            "log_tune({'human_weight': 1}, {'agreement': 0.7962}, {'pairs': 'params.yaml'}, pathlib.Path('m'), mp);"
            # made by `dvc repro` on the base commit before B was committed; and an unrelated dirty run
            "log_tune({}, {}, {}, pathlib.Path('m'), mp, tags={'git_commit': sys.argv[1], 'git_dirty': 'True'});"
            "log_tune({}, {}, {}, pathlib.Path('m'), mp, tags={'git_commit': sys.argv[1], 'git_dirty': 'False'})",
            base,
        ],
        cwd=root,
        env=e,
        check=True,
        capture_output=True,
    )
    out = _vital(
        root, e, "report", "--base", base, "--head", "HEAD", "--md", "--out", "report.md", "--images", "img"
    )
    assert out.returncode == 0, out.stderr
    md = (root / "report.md").read_text()
    print(md)
    assert md.startswith(f"## vital: `{base[:7]}` → `HEAD ({head[:7]})`")
    assert "| `selector.human_weight` | `auto` | `1` |" in md
    sel = md[md.index("### Selection") : md.index("### VQA")]
    committed = stats.detail(REPO, "select")  # the base commit's figures
    before = committed["heldout_human"]["selector"]["agreement"]
    after = committed["heldout_human_agreement_by_weight"]["1"]
    change = f"{after - before:+.3f}"
    assert f"| held-out clinician agreement: selector | {before:.3f} | {after:.3f} | {change} |" in sel
    gap = committed["heldout_human"]["selector_minus_judge"]
    lo, hi = gap["ci95"]
    assert (
        f"selector minus judge (95% CI) | {gap['difference']:+.3f} [{lo}, {hi}] | +0.021 [-0.03, 0.07]" in sel
    )
    vqa = md[md.index("### VQA") : md.index("### Metrics diff")]
    assert "**demo**, fine-tuned (mean ± sd over seeds)" in vqa
    assert "<summary>demo, zero-shot: unchanged</summary>" in vqa  # evaluate.json is the same in both
    gain = stats.detail(REPO, "evaluate_finetuned")["demo"]["top_minus_random"]["closed_accuracy"]
    ran = f"(n={gain['n']}, {gain['wins']}/{gain['n']} wins)"
    before_pr = f"{gain['mean']:+.3f} ± {gain['std']:.3f} {ran}"
    after_pr = f"{gain['mean'] + 0.01:+.3f} ± {gain['std']:.3f} {ran}"  # the PR's edit above
    assert f"| **top − random** closed_accuracy | {before_pr} | {after_pr} |" in vqa
    metrics = md[md.index("### Metrics diff") : md.index("### Curves")]
    assert "`heldout_agreement`" in metrics and change in metrics  # the headline numbers alone
    assert "wall" not in metrics  # run-to-run noise left out
    curves = md[md.index("### Curves") : md.index("### MLflow")]
    assert "![select_curve](img/select_curve.png)" in curves
    assert (root / "img" / "select_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "select_weights" not in curves  # unchanged plots are not drawn
    mlf = md[md.index("### MLflow") :]
    run_id = lineage.walk_back("vital-select", 1, root)["run_id"]
    assert f"| `vital-select` | 1 | `{run_id}` | `{head[:7]}` |" in mlf
    assert (
        f"| `vital-select` | 2 | `{lineage.walk_back('vital-select', 2, root)['run_id']}` | `{base[:7]}` + uncommitted"
        in mlf
    )
    assert "| `vital-select` | 3 |" not in mlf  # logged from the clean base: not this PR's


def test_report_against_the_workspace_and_errors(pair):
    root, e, base, _ = pair
    out = _vital(root, e, "report", "--base", base, "--md", "--no-mlflow", "--images", "img")
    assert out.returncode == 0, out.stderr
    assert "→ `workspace`" in out.stdout and "### MLflow" not in out.stdout
    bad = _vital(root, e, "report", "--base", "no-such-rev", "--md")
    assert bad.returncode == 2 and "no-such-rev" in bad.stderr
    assert _vital(root, e, "report", "--md").returncode == 2  # --md compares two revisions: needs --base


def test_workflow_is_a_valid_github_actions_workflow():
    """Schema check (check-jsonschema's vendored GitHub workflow schema) plus what the schema cannot see."""
    pytest.importorskip("check_jsonschema", reason="the dev extra installs check-jsonschema")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.github-workflows",
            str(WORKFLOW),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    wf = yaml.safe_load(WORKFLOW.read_text())
    assert "pull_request" in wf[True]  # YAML 1.1 reads the key `on` as True
    assert wf["permissions"]["pull-requests"] == "write"
    steps = wf["jobs"]["report"]["steps"]
    script = "\n".join(s.get("run", "") for s in steps)
    assert "dvc pull --run-cache" in script and "dvc push --run-cache" in script
    assert "cml comment update" in script  # one comment, updated on every push
    # the report command in the workflow parses with vital's own CLI
    from vital.cli import build_parser

    line = next(ln.strip() for ln in script.splitlines() if ln.strip().startswith("vital report"))
    args = build_parser().parse_args(shlex.split(line)[1:])
    assert "${{" not in line  # expressions reach scripts through env (no script injection from branch names)
    assert args.base and args.md and args.out == "report.md"


def test_broken_workflow_fails_the_schema_check(tmp_path):
    """The check above can fail: a job without runs-on is rejected."""
    pytest.importorskip("check_jsonschema", reason="the dev extra installs check-jsonschema")
    wf = yaml.safe_load(WORKFLOW.read_text())
    del wf["jobs"]["report"]["runs-on"]
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump({"on": wf[True], **{k: v for k, v in wf.items() if k is not True}}))
    out = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(bad)],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
