"""The stage table is the one declaration of a stage: dvc.yaml's entries and the docs' stage table are
generated from it, any drift fails `vital dag --check`, and a new stage takes three edits."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vital import dag
from vital.params import load_params
from vital.pipeline import STAGES, in_pipeline

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(root: Path, *cmd: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(root))
    env.update(DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t")
    env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    if ok:
        assert out.returncode == 0, f"{' '.join(cmd)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def scratch(root: Path) -> Path:
    for item in ("dvc.yaml", "params.yaml", "stages", "vital"):
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, root / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, root / item)
    return root


def test_every_table_stage_in_dvc_yaml_is_exactly_what_the_table_generates():
    params = load_params(REPO / "params.yaml")
    for pipeline in ("dvc.yaml", "bakeoff/dvc.yaml"):
        written = yaml.safe_load((REPO / pipeline).read_text())["stages"]
        assert set(written) == set(in_pipeline(pipeline)), pipeline
        for name, stage in in_pipeline(pipeline).items():
            assert written[name] == dag.stage_spec(stage, params, REPO), name


def test_docs_stage_table_is_the_generated_one():
    params = load_params(REPO / "params.yaml")
    assert dag.docs_problems(params, REPO) == []
    text = (REPO / dag.DOCS).read_text()
    for name in STAGES:  # every stage has its row, chat_eval included
        assert f"\n| {name} " in text, name


@pytest.mark.parametrize(
    "edit, complaint",
    [
        (lambda s: s["pairs"]["outs"].append("artifacts/extra.jsonl"), "stage 'pairs': outs is"),
        (lambda s: s["curate"].update(cmd="python stages/curate.py --fast"), "stage 'curate': cmd is"),
        (lambda s: s["select"]["params"].append("curate"), "stage 'select': params is"),
        (lambda s: s["judge"]["metrics"].clear(), "stage 'judge': metrics is"),
        (lambda s: s["tune"]["matrix"].update(seed=[0]), "stage 'tune': matrix is"),
        (lambda s: s["select"]["plots"].pop(), "stage 'select': plots is"),
        (lambda s: s["finetune_base"].update(foreach=[0]), "stage 'finetune_base': foreach is"),
        (lambda s: s.update(hand={"cmd": "true"}), "stage 'hand' is in"),
    ],
)
def test_check_fails_on_any_drift_of_a_stage_entry(tmp_path, edit, complaint):
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    edit(doc["stages"])
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.copytree(REPO / "stages", tmp_path / "stages")
    found = dag.problems(tmp_path / "dvc.yaml", load_params(REPO / "params.yaml"), tmp_path)
    assert len(found) == 1 and found[0].startswith(complaint), found


def test_write_regenerates_a_stage_and_keeps_the_rest_of_the_file(tmp_path):
    root = scratch(tmp_path)
    text = (root / "dvc.yaml").read_text()
    broken = text.replace("      - artifacts/pairs.jsonl\n", "      - artifacts/wrong.jsonl\n", 1)
    assert broken != text
    (root / "dvc.yaml").write_text(broken)
    params = load_params(root / "params.yaml")
    assert dag.write(root / "dvc.yaml", params, root) == ["pairs"]
    assert dag.problems(root / "dvc.yaml", params, root) == []
    after = (root / "dvc.yaml").read_text()
    assert after.splitlines()[:4] == text.splitlines()[:4]  # the header comment
    assert after[after.index("\nplots:") :] == text[text.index("\nplots:") :]  # the top-level plots


ENTRY = """def run(params, paths):
    out = paths.root / "artifacts" / "hello.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(params.hello.greeting + "\\n")
    return {"greetings": 1, "greeting": params.hello.greeting}


def headline(detail):
    return {"greetings": detail["greetings"]}
"""


def test_a_new_stage_is_three_edits_and_vital_dag_write(tmp_path):
    root = scratch(tmp_path)
    # 1. the entry
    (root / "vital" / "hello.py").write_text(ENTRY)
    # 2. its Stage row
    table = root / "vital" / "pipeline.py"
    row = (
        '        Stage("hello", "vital.hello:run", outs=("artifacts/hello.txt",), headline="vital.hello:headline", '
        'doc="says hello"),\n'
    )
    assert table.read_text().count("    for s in (\n") == 1
    table.write_text(table.read_text().replace("    for s in (\n", "    for s in (\n" + row))
    # 3. its params section
    params_py = root / "vital" / "params.py"
    section = 'class HelloParams(Section):\n    greeting: str = "hello, vital"\n\n\n'
    field = "    hello: HelloParams = Field(default_factory=HelloParams)\n"
    text = params_py.read_text().replace(
        "class Params(Section):\n", section + "class Params(Section):\n" + field
    )
    params_py.write_text(text)

    run(root, "vital", "dag", "--write")
    assert (root / "stages" / "hello.py").is_file()
    assert yaml.safe_load((root / "params.yaml").read_text())["hello"] == {"greeting": "hello, vital"}
    assert run(root, "vital", "dag", "--check").returncode == 0
    (root / ".gitignore").write_text("__pycache__/\n")
    run(root, "git", "init", "-q")
    run(root, "dvc", "init", "-q")
    repro = run(root, "dvc", "repro", "hello")
    assert "Running stage 'hello'" in repro.stdout
    assert (root / "artifacts" / "hello.txt").read_text() == "hello, vital\n"
    assert yaml.safe_load((root / "metrics" / "hello.json").read_text()) == {"greetings": 1}  # headline
    evidence = yaml.safe_load((root / "metrics" / "detail" / "hello.json").read_text())
    assert evidence["detail"] == {"greetings": 1, "greeting": "hello, vital"} and evidence["wall_s"] >= 0
    assert "hello" in yaml.safe_load((root / "dvc.lock").read_text())["stages"]


def test_judge_does_not_depend_on_generate():
    """The dry-run estimate both share lives in vital/llm/, so an edit to generate.py does not rerun judge."""
    params = load_params(REPO / "params.yaml")
    assert "vital/generate.py" not in dag.stage_deps(STAGES["judge"], params, REPO).code
    assert "vital/generate.py" in dag.stage_deps(STAGES["generate"], params, REPO).code
