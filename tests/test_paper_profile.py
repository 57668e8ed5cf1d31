"""The paper profile runs: its stages from foundation to chat_eval (the fine-tune stages aside), as DVC runs
them, with no demo code importable.

tests/paper_world.py builds the repository (real formats, no ``data/corpus/truth.jsonl``, tiny local
checkpoints in the hub layouts); generate, judge and chat_eval talk to the OpenAI-compatible server of
tests/openai_server.py over real HTTP. ``vital dag --write`` writes the deps for these params and a real
``dvc repro chat_eval`` runs every stage with ``VITAL_FORBID_IMPORTS=vital.demo,vital.world``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import paper_world
from tests.openai_server import FakeOpenAIServer

REPO = Path(__file__).resolve().parents[1]
FORBID = "vital.demo,vital.world"
# recording a pretrained checkpoint loads no model: those stages run with the ML libraries forbidden too
RECORD_ONLY = {"foundation", "align"}
HEAVY = "torch,open_clip,transformers,peft"
SETS = {"vqa_rad": 4, "slake": 3, "pathvqa": 2, "llava_med_chat": 2}  # test-split questions each set keeps


def _env(root: Path, forbid: str | None = FORBID) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VITAL_FORBID_IMPORTS"}
    env |= {
        "PYTHONPATH": str(root),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "OPENAI_API_KEY": paper_world.API_KEY,
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
    }
    if forbid:
        env["VITAL_FORBID_IMPORTS"] = forbid
    return env


def _python(code: str, env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True)


# ------------------------------------------------------------------ the guard
def test_forbidden_imports_fail_naming_the_module(tmp_path):
    env = _env(tmp_path)
    # a submodule fails at its package, the first forbidden module the import reaches
    for module, named in (("vital.world", "vital.world"), ("vital.demo.heuristic_judge", "vital.demo")):
        r = _python(f"import {module}", env)
        assert r.returncode != 0
        assert f"ImportError: import of {named} is forbidden by VITAL_FORBID_IMPORTS={named}" in r.stderr
    # the modules of the paper profile's stages import without them (sample and labels used to import
    # vital.world at the top, chat_eval vital.demo)
    r = _python("import vital.sample, vital.labels, vital.chat_eval, vital.generate, vital.judge", env)
    assert r.returncode == 0, r.stderr
    # unset: nothing is installed, and the demo world imports
    r = _python(
        "import sys, vital.world, vital; print(any(isinstance(f, vital.ForbiddenImportFinder) for f in sys.meta_path))",
        _env(tmp_path, forbid=None),
    )
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def test_forbidden_prefix_matches_whole_module_names(tmp_path):
    # "vital.demo" forbids vital.demo and vital.demo.x, not a module that merely starts with the text
    r = _python("import vital.io, vital.llm.cache", _env(tmp_path, forbid="vital.i,vital.llm.c"))
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------ params-paper.yaml under DVC
def test_paper_params_hold_every_section_dvc_yaml_names():
    """``cp params-paper.yaml params.yaml && dvc repro`` stops at a stage whose params section is missing
    ("Parameters 'pairs' are missing from 'params.yaml'"), defaults or not."""
    import yaml

    paper = yaml.safe_load((REPO / "params-paper.yaml").read_text(encoding="utf-8"))
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    named = set()
    for stage in stages.values():
        for entry in (stage.get("do") or stage).get("params", []):  # a key, or {file: [keys]}
            named.update([entry] if isinstance(entry, str) else [k for ks in entry.values() for k in ks])
    missing = []
    for key in sorted(named):
        node = paper
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                missing.append(key)
                break
            node = node[part]
    assert named and not missing, f"params-paper.yaml lacks {missing} (named in dvc.yaml)"


# ------------------------------------------------------------------ the whole profile
def _sh(root: Path, env: dict[str, str], *cmd: str) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-4000:]}"
    return r


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _read(root: Path, rel: str):
    return json.loads((root / rel).read_text(encoding="utf-8"))


@pytest.mark.slow
def test_paper_profile_runs_foundation_to_chat_eval_without_demo_code(tmp_path):
    root = tmp_path / "repo"
    start = time.perf_counter()
    with FakeOpenAIServer(content_fn=paper_world.content) as server:
        params = paper_world.build_repo(root, server.base_url)
        env, light_env = _env(root), _env(root, forbid=f"{FORBID},{HEAVY}")
        assert not (root / "data" / "corpus" / "truth.jsonl").exists()
        guard = _python("import vital.demo", env, cwd=root)
        assert "forbidden by VITAL_FORBID_IMPORTS" in guard.stderr  # the guard is on in the stages' env
        # the real thing: deps written for these params (no demo code or data among them), then dvc repro
        _sh(root, env, sys.executable, "-m", "vital.cli", "dag", "--write")
        dvc_yaml = (root / "dvc.yaml").read_text(encoding="utf-8")
        assert (
            "vital/demo" not in dvc_yaml and "vital/world" not in dvc_yaml and "truth.jsonl" not in dvc_yaml
        )
        _sh(root, env, "git", "add", "-A")
        _sh(root, env, "git", "commit", "-qm", "paper profile")
        for stage in sorted(RECORD_ONLY):  # recording a checkpoint loads no ML library
            _sh(root, light_env, sys.executable, f"stages/{stage}.py")
        cpu = _children_cpu()
        repro = _sh(root, env, "dvc", "repro", "chat_eval")
        walls = {
            "dvc repro (wall s, CPU s)": (
                round(time.perf_counter() - start, 1),
                round(_children_cpu() - cpu, 1),
            )
        }
        assert "Running stage 'chat_eval'" in repro.stdout
        again = _sh(root, env, "dvc", "repro", "chat_eval")
        assert "Running stage" not in again.stdout  # a second repro runs nothing
        chats = server.chat_requests()
    print(f"paper profile: {time.perf_counter() - start:.1f}s; per stage (wall s, CPU s): {walls}")

    n_figures = len(paper_world.DOMAINS) * paper_world.PER_DOMAIN
    n_candidates = n_figures * paper_world.CANDIDATES
    clip = params["embed"]["backbone"]
    # foundation / align `pretrained`: the local checkpoints are recorded, loaded through open_clip's
    # local-dir schema (the code path of hf-hub:) and never copied
    found = _read(root, "models/foundation/clip/checkpoint.json")
    assert found["open_clip_id"] == f"local-dir:{clip}" and found["backend"] == "pretrained"
    base = _read(root, "models/base/checkpoint.json")
    assert base["model"] == params["align"]["model"] and base["aligned_here"] is False
    for curve in ("foundation_loss.csv", "align_loss.csv"):  # declared in dvc.yaml: written, with no points
        assert (root / "metrics" / "plots" / curve).read_text() == "step,loss\n"

    generated = _read(root, "metrics/detail/generate.json")
    gen, judge = generated["detail"], _read(root, "metrics/detail/judge.json")["detail"]
    assert (gen["backend"], gen["candidates"], generated["failed"]) == ("openai", n_candidates, 0)
    assert (judge["backend"], judge["judged"]) == ("openai", n_candidates)
    assert gen["requests_sent"] + judge["requests_sent"] <= len(chats)  # all over HTTP to the test server
    labels = _read(root, "metrics/detail/labels.json")["detail"]
    assert labels["backend"] == "files" and labels["labels"] == n_figures
    pairs = _read(root, "metrics/detail/pairs.json")["detail"]["by_source_split"]
    assert pairs["human_train"] > 0 and pairs["model_train"] > 0

    emb = _read(root, "metrics/detail/embed.json")["detail"]
    assert (emb["backbone"], emb["candidates"], emb["context_length"]) == (clip, n_candidates, 256)
    sel = _read(root, "metrics/detail/select.json")["detail"]
    assert (sel["finetune_backbone"], sel["human_share_of_weight"], sel["candidates_scored"]) == (
        "full",
        params["selector"]["human_share"],
        n_candidates,
    )
    assert _backbone_moved(
        root / "models" / "selector" / "backbone.safetensors", root / clip, params["selector"]["backbone_lr"]
    )

    top = _read(root, f"artifacts/curated/top{params['tune']['keep']}.json")
    assert top and all(r["conversations"][0]["value"].count("<image>") == 1 for r in top)
    models = ["base"] + [
        f"{s}-s{seed}" for s in params["tune"]["subsets"] for seed in params["tune"]["seeds"]
    ]
    for name in models[1:]:
        assert (
            _read(root, f"metrics/detail/tune/{name}.json")["detail"]["steps"] == params["tune"]["max_steps"]
        )
        assert (root / "models" / "tuned" / name / "config.json").is_file()
    ev = _read(root, "metrics/detail/evaluate.json")["detail"]
    for s, n in SETS.items():
        assert ev[s]["data"]["n_items"] == n, s
        for m in models:
            assert (root / "artifacts" / "predictions" / m / f"{s}.jsonl").is_file()
            if s != "llava_med_chat":
                assert ev[s][m]["n_closed"] + ev[s][m]["n_open"] == n
    chat = _read(root, "metrics/detail/chat_eval.json")["detail"]["llava_med_chat"]["relative"]
    assert {m: chat[m]["n"] for m in models} == dict.fromkeys(models, SETS["llava_med_chat"])


def _backbone_moved(trained: Path, checkpoint: Path, lr: float) -> bool:
    """The selector fine-tuned the CLIP backbone it loaded from the checkpoint (finetune_backbone: full):
    its weights moved, by no more than a few optimiser steps of ``selector.backbone_lr`` (a backbone that
    had not loaded the checkpoint would differ from it everywhere)."""
    import torch
    from safetensors.torch import load_file

    after = load_file(str(trained))
    before = torch.load(checkpoint / "open_clip_pytorch_model.bin", weights_only=True)
    assert set(after) == set(before)
    moved = max((after[k] - before[k]).abs().max().item() for k in before)
    assert moved <= 10 * lr, f"backbone moved by {moved}: not the checkpoint's weights fine-tuned"
    return moved > 0
