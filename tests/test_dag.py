"""The DAG tells the truth: each stage's deps are the code it runs and the data it reads, in every profile.

Static: dvc.yaml's deps equal what `vital dag` computes, and every vital module a stage actually imports
is inside its computed closure. In a real DVC repo: an edit to a module marks exactly the stages whose
closure holds it, and the paper profile depends on no demo code or data.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vital import dag
from vital.params import load_params, parse_params
from vital.pipeline import STAGES

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEMO_ONLY = ("vital/demo", "vital/world", "data/corpus/truth.jsonl")


def paper_params():
    return parse_params(yaml.safe_load((REPO / "params-paper.yaml").read_text()))


def test_dvc_yaml_deps_are_exactly_what_each_stage_runs_and_reads():
    assert dag.problems(REPO / "dvc.yaml", load_params(REPO / "params.yaml"), REPO) == []


def test_every_module_a_stage_imports_is_in_its_closure():
    """Import each stage's entry and chosen backends for real; every vital module loaded must be a dep."""
    params = load_params(REPO / "params.yaml")
    for name, stage in STAGES.items():
        deps = dag.stage_deps(stage, params, REPO)
        backends = [dag._registry(reg)[dag._param(params, p)].module for p, reg in stage.backends]
        code = (
            "import importlib, json, sys\n"
            f"for m in {['vital.stage', stage.entry.partition(':')[0], *backends]!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m == 'vital' or m.startswith('vital.'))))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
        )
        loaded = set(json.loads(out.stdout))
        assert loaded <= deps.modules, f"{name}: imports {sorted(loaded - deps.modules)} outside its deps"


def test_paper_profile_depends_on_no_demo_code_or_data():
    for name, deps in dag.all_deps(paper_params(), REPO).items():
        demo = [d for d in deps.all if d.startswith(DEMO_ONLY)]
        assert not demo, f"paper profile: stage {name} depends on {demo}"
        assert not {m for m in deps.modules if m.startswith(("vital.demo", "vital.world"))}


def test_demo_backends_are_deps_only_of_the_stages_that_choose_them():
    demo = dag.all_deps(load_params(REPO / "params.yaml"), REPO)
    assert "vital/demo/template_generator.py" in demo["generate"].code
    assert "data/corpus/truth.jsonl" in demo["generate"].data
    assert not any(d.startswith("vital/demo") for d in demo["sample"].all + demo["embed"].all)


def test_every_dvc_yaml_command_parses_with_its_stage_options():
    """A cmd whose options the stage script does not take would fail only when DVC runs it."""
    import re
    import shlex

    from vital.stage import parser

    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    for name, spec in doc["stages"].items():
        cmd = re.sub(r"\$\{[^}]+\}", "0", spec.get("do", spec)["cmd"])
        argv = shlex.split(cmd)
        assert argv[:2] == ["python", f"stages/{STAGES[name].script}.py"], name
        parser(STAGES[name]).parse_args(argv[2:])  # exits (SystemExit) on an unknown or missing option


def test_stage_refuses_to_run_when_dvc_yaml_misses_a_dep(tmp_path):
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    doc["stages"]["sample"]["deps"].remove("vital/seeding.py")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(dag.DagError, match=r"vital/seeding.py.*vital dag --write"):
        dag.check_stage("sample", load_params(REPO / "params.yaml"), tmp_path)


def test_bakeoff_pipeline_file_is_generated_and_checked_like_the_root_one(tmp_path):
    from vital.pipeline import PIPELINES, in_pipeline

    assert PIPELINES == ("dvc.yaml", "bakeoff/dvc.yaml")
    assert set(in_pipeline("bakeoff/dvc.yaml")) == {
        "bakeoff_tune",
        "bakeoff_evaluate",
        "control_data",
        "control_tune",
        "control_evaluate",
    }
    params = load_params(REPO / "params.yaml")
    assert dag.problems(REPO / "bakeoff/dvc.yaml", params, REPO) == []
    # the root file's check does not ask for the bakeoff's downstream stages, nor the reverse
    assert "bakeoff_tune" not in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert "models/bakeoff/judge-s0" in dag.stage_deps(STAGES["bakeoff_evaluate"], params, REPO).data
    doc = yaml.safe_load((REPO / "bakeoff/dvc.yaml").read_text())
    doc["stages"]["bakeoff_tune"]["deps"].remove("vital/bakeoff/downstream.py")
    (tmp_path / "bakeoff").mkdir()
    (tmp_path / "bakeoff/dvc.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(
        dag.DagError,
        match=r"bakeoff/dvc.yaml: stage .bakeoff_tune. runs or reads vital/bakeoff/downstream.py",
    ):
        dag.check_stage("bakeoff_tune", params, tmp_path)
    assert dag.problems(tmp_path / "bakeoff/dvc.yaml", params, tmp_path)[0].startswith("stage 'bakeoff_tune'")


# ------------------------------------------------------------------ a real DVC repo
def sh(cwd: Path, *cmd: str) -> str:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{' '.join(cmd)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def changed_stages(root: Path) -> set[str]:
    status = json.loads(sh(root, "dvc", "status", "--json") or "{}")
    return {name.split("@")[0].split(":")[-1] for name in status}  # bakeoff/dvc.yaml:bakeoff_tune@judge-0


@pytest.fixture(scope="module")
def locked(tmp_path_factory) -> Path:
    """The repo's code, dvc.yaml and params in a fresh git + DVC repo, every stage committed as up to date
    (placeholder inputs and outputs: `dvc status` compares hashes, nothing needs to run)."""
    root = tmp_path_factory.mktemp("dag")
    for item in ("dvc.yaml", "bakeoff", "params.yaml", "params-paper.yaml", "stages", "vital"):
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, root / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, root / item)
    sh(root, "git", "init", "-q")
    sh(root, "dvc", "init", "-q")
    assert dag.placeholders(root) > 0
    sh(root, "dvc", "commit", "-f")
    assert changed_stages(root) == set()
    return root


def edit(root: Path, module: str) -> None:
    with (root / module).open("a") as f:
        f.write("\n# an edit\n")


def restore(root: Path, module: str) -> None:
    shutil.copy(REPO / module, root / module)


@pytest.mark.slow
@pytest.mark.parametrize(
    "module",
    [
        "vital/io.py",
        "vital/seeding.py",
        "vital/embed/stage.py",
        "vital/embed/store.py",
        "vital/demo/template_generator.py",
        "vital/vqa/metrics.py",
    ],
)
def test_an_edit_marks_exactly_the_stages_whose_closure_holds_it(locked, module):
    params = load_params(locked / "params.yaml")
    expected = {name for name, d in dag.all_deps(params, locked).items() if dag.covered(module, d.code)}
    assert expected, f"{module} is no stage's dep"
    edit(locked, module)
    try:
        assert changed_stages(locked) == expected
    finally:
        restore(locked, module)
    assert changed_stages(locked) == set()


@pytest.mark.slow
def test_paper_profile_does_not_rerun_on_a_demo_edit(locked, tmp_path):
    shutil.copy(locked / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(locked / "bakeoff" / "dvc.yaml", tmp_path / "bakeoff.dvc.yaml")
    shutil.copy(locked / "params.yaml", tmp_path / "params.yaml")
    try:
        shutil.copy(locked / "params-paper.yaml", locked / "params.yaml")
        sh(locked, "vital", "dag", "--write")
        assert "vital/demo" not in (locked / "dvc.yaml").read_text()
        dag.placeholders(locked)  # the paper profile's own inputs (its corpus, eval sets) too
        sh(locked, "dvc", "commit", "-f")
        edit(locked, "vital/demo/template_generator.py")
        edit(locked, "vital/world/findings.py")
        assert changed_stages(locked) == set()
        edit(locked, "vital/generate.py")
        changed = changed_stages(locked)
        assert "generate" in changed and "judge" not in changed  # judge shares vital/llm, not generate.py
        edit(locked, "vital/llm/accounting.py")
        assert {"generate", "judge"} <= changed_stages(locked)
    finally:
        for module in (
            "vital/demo/template_generator.py",
            "vital/world/findings.py",
            "vital/generate.py",
            "vital/llm/accounting.py",
        ):
            restore(locked, module)
        shutil.copy(tmp_path / "dvc.yaml", locked / "dvc.yaml")
        shutil.copy(tmp_path / "bakeoff.dvc.yaml", locked / "bakeoff" / "dvc.yaml")
        shutil.copy(tmp_path / "params.yaml", locked / "params.yaml")
        sh(locked, "dvc", "commit", "-f")


def test_curate_mix_files_are_deps_of_curate(tmp_path):
    """An instruction file named in curate.mix is read by curate: an edit to it must rerun curate."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["curate"]["mix"] = {"mixed": ["top40", "data/llava_med/llava_med_instruct_10k.json"]}
    params = parse_params(raw)
    deps = dag.stage_deps(STAGES["curate"], params, REPO)
    assert "data/llava_med/llava_med_instruct_10k.json" in deps.data and "top40" not in deps.data
    with pytest.raises(dag.DagError, match="llava_med_instruct_10k.json"):  # dvc.yaml written without it
        shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
        dag.check_stage("curate", params, tmp_path)


def test_tune_launcher_goes_into_the_tune_cmd_and_its_config_into_the_deps(tmp_path):
    """Before: the dvc.yaml cmd had to be edited by hand to launch the tune under accelerate."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tune"]["launcher"] = "accelerate launch --config_file configs/accelerate/zero3.yaml"
    params = parse_params(raw)
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "bakeoff").mkdir()
    shutil.copy(REPO / "bakeoff/dvc.yaml", tmp_path / "bakeoff/dvc.yaml")
    found = dag.problems(tmp_path / "dvc.yaml", params, tmp_path)
    assert any("tune.launcher makes it 'accelerate launch" in line for line in found), found
    assert "tune" in dag.write(tmp_path / "dvc.yaml", params, tmp_path)
    tune = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]["tune"]
    assert tune["cmd"] == (
        "accelerate launch --config_file configs/accelerate/zero3.yaml stages/tune.py "
        "--subset ${item.subset} --seed ${item.seed}"
    )
    assert "configs/accelerate/zero3.yaml" in tune["deps"]
    assert dag.problems(tmp_path / "dvc.yaml", params, tmp_path) == []
    # back to one process: plain python again, the config no longer a dep
    demo = load_params(REPO / "params.yaml")
    dag.write(tmp_path / "dvc.yaml", demo, tmp_path)
    tune = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]["tune"]
    assert tune["cmd"] == yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["tune"]["cmd"]
    assert (
        tune["cmd"].startswith("python stages/tune.py")
        and "configs/accelerate/zero3.yaml" not in tune["deps"]
    )
