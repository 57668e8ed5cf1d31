"""LLaVA-Med's VQA protocol: a model fine-tuned on a set's train split, then scored on its test split."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vital import finetune
from vital.evaluate import evaluate_models
from vital.llava.testing import side_records, tiny_base
from vital.params import EvalSet, FinetuneParams
from vital.vqa.loaders import load_set, read_sets

REPO = Path(__file__).resolve().parents[1]


def write_split(folder: Path, name: str, n: int, seed: int) -> Path:
    """A demo-format split of ``n`` side questions ("left"/"right", OPEN) with its images."""
    rows = [
        {
            "question_id": f"{name}-{rec['id']}",
            "image": rec["image"],
            "question": "Which side is the lesion on?",
            "answer": rec["conversations"][1]["value"],
            "answer_type": "OPEN",
        }
        for rec in side_records(folder, n, seed=seed, size=64)
    ]
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_vqa_records_are_single_turn_conversations_with_absolute_images(tmp_path):
    path = write_split(tmp_path / "vqa", "train", 3, seed=0)
    items = load_set("demo", "demo", path).items
    records = finetune.vqa_records(items)
    assert len(records) == 3
    first = records[0]
    assert first["id"] == items[0].question_id
    assert Path(first["image"]).is_absolute() and Path(first["image"]).is_file()
    assert first["conversations"] == [
        {"from": "human", "value": "<image>\nWhich side is the lesion on?"},
        {"from": "gpt", "value": items[0].answer},
    ]


SPEC = EvalSet(name="demo", format="demo", path="vqa/train.jsonl", split="train")
FP = FinetuneParams(sets=[SPEC], max_steps=12, batch_size=6, checkpoint_every=4, seed=3)


def _finetune(root: Path, name: str, on_step=None) -> dict:
    return finetune.run(
        root / "base",
        read_sets(FP.sets, root, max_invalid_fraction=0.0),
        FP,
        out_root=root / "finetuned" / name,
        work_dir=root / "work" / name,
        metrics_path=root / f"{name}.json",
        curves_dir=root / "curves" / name,
        on_step=on_step,
    )


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    tiny_base(root / "base", width=32, patch_size=16)
    write_split(root / "vqa", "train", 24, seed=0)
    write_split(root / "vqa", "test", 8, seed=1)
    return root, _finetune(root, "base-s3")


def test_finetune_trains_every_set_and_writes_a_loadable_checkpoint(finetuned):
    root, metrics = finetuned
    assert set(metrics) == {"demo"}
    m = metrics["demo"]
    assert (m["method"], m["seed"], m["steps"], m["examples"]) == ("full", 3, 12, 24)
    assert m["train"]["n_items"] == 24 and m["train_file"].endswith("vqa/train.jsonl")
    assert m["final_loss"] < m["first_loss"]
    assert json.loads((root / "base-s3.json").read_text())["demo"]["steps"] == 12
    assert (root / "curves" / "base-s3" / "demo.csv").read_text().startswith("step,loss")
    assert not (root / "work" / "base-s3" / "demo").exists()  # checkpoint and records removed once done

    test = load_set("demo", "demo", root / "vqa" / "test.jsonl")
    out = evaluate_models(
        {"base-s3": root / "finetuned" / "base-s3" / "demo"},
        [test],
        batch_size=4,
        max_new_tokens=4,
        device="cpu",
    )
    assert out["demo"]["base-s3"]["n_open"] == 8


def test_each_fine_tuned_model_is_registered_per_set_with_its_inputs(finetuned, monkeypatch):
    from vital import lineage
    from vital.params import MlflowParams

    root, metrics = finetuned
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    sets = read_sets(FP.sets, root, max_invalid_fraction=0.0)
    mp = MlflowParams(experiment="t", registered_model="vital-llava")
    out = finetune.log_lineage(metrics, sets, root / "base", root / "finetuned" / "base-s3", FP, mp, root)
    rec = out["demo"]
    assert rec["registered_model"] == "vital-llava-demo" and rec["version"] == "1"
    back = lineage.walk_back("vital-llava-demo", 1, root)
    assert back["source"] == "finetuned/base-s3/demo"
    assert back["tags"]["vital.finetuned_from"] == "base-s3" and back["tags"]["vital.finetune_set"] == "demo"
    roles = {i["role"] for i in back["inputs"]}
    assert {"base", "train_split", "train_images"} <= roles
    assert back["params"]["method"] == "full"


class Killed(Exception):
    pass


def test_killed_finetune_resumes_to_the_same_model(finetuned):
    """Killed after step 6 (checkpoint at 4), rerun: the same loss curve and weights as the unkilled run."""
    root, _ = finetuned

    def kill(step, loss):
        if step == 6:
            raise Killed

    with pytest.raises(Killed):
        _finetune(root, "resumed", on_step=kill)
    assert (root / "work" / "resumed" / "demo" / "checkpoint" / "step-4").is_dir()
    metrics = _finetune(root, "resumed")
    assert metrics["demo"]["resumed_from"] == 4 and metrics["demo"]["steps"] == 12
    curve = (root / "curves" / "resumed" / "demo.csv").read_text().splitlines()
    expected = (root / "curves" / "base-s3" / "demo.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in curve] == [r.split(",")[0] for r in expected]
    for a, b in zip(curve[1:], expected[1:], strict=True):
        assert abs(float(a.split(",")[1]) - float(b.split(",")[1])) <= 1e-6  # CPU runs are bit-identical
    got = load_file(str(root / "finetuned" / "resumed" / "demo" / "model.safetensors"))
    want = load_file(str(root / "finetuned" / "base-s3" / "demo" / "model.safetensors"))
    assert got.keys() == want.keys()
    for k in got:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=0)


def test_stage_script_names_a_missing_train_split(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"mlflow": {"enabled": False}}))
    proc = subprocess.run(
        [sys.executable, str(REPO / "stages" / "finetune.py"), "--model", "models/base", "--name", "base-s0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "[finetune] error: set 'demo': question file not found" in proc.stderr
    assert "train.jsonl" in proc.stderr


def test_stage_with_no_sets_still_writes_its_declared_outputs(tmp_path):
    # `finetune.sets: []` turns the protocol off; DVC still expects every declared output to exist
    params = {"finetune": {"sets": []}, "mlflow": {"enabled": False}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [sys.executable, str(REPO / "stages" / "finetune.py"), "--model", "models/base", "--name", "base-s0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "models" / "finetuned" / "base-s0").is_dir()
    assert (tmp_path / "metrics" / "plots" / "finetune" / "base-s0").is_dir()
    evidence = json.loads((tmp_path / "metrics" / "detail" / "finetune" / "base-s0.json").read_text())
    assert evidence["item"] == "base-s0" and evidence["detail"] == {}


def test_pipeline_fine_tunes_the_base_tune_started_from():
    # the control must be the checkpoint tune.base names (a hub id in the paper profile), not models/base
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["finetune_base"]["do"]
    assert "--model ${tune.base}" in stage["cmd"] and "tune.base" in stage["params"]
