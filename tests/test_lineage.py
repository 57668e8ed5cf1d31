"""MLflow lineage: a registered tuned model leads back to the DVC digests of everything that made it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from vital import dvc_repo, lineage
from vital.params import MlflowParams


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def repo(tmp_path):
    """A repo after `dvc repro` up to curate: dvc.lock + data.dvc + the files they name."""
    (tmp_path / "artifacts" / "curated").mkdir(parents=True)
    curated = b'[{"id": "a#0", "image": "images/a.png", "conversations": []}]'
    (tmp_path / "artifacts" / "curated" / "top40.json").write_bytes(curated)
    (tmp_path / "models" / "base").mkdir(parents=True)
    (tmp_path / "models" / "base" / "config.json").write_text("{}")
    (tmp_path / "models" / "tuned").mkdir(parents=True)

    def out(path, md5):
        return {"path": path, "hash": "md5", "md5": md5}

    lock = {
        "schema": "2.0",
        "stages": {
            "sample": {
                "deps": [out("data/corpus/figures.jsonl", "f1")],
                "outs": [out("artifacts/sample.jsonl", "s1")],
            },
            "labels": {
                "deps": [out("artifacts/sample.jsonl", "s1")],
                "outs": [out("artifacts/labels.jsonl", "l1")],
            },
            "select": {
                "deps": [out("artifacts/labels.jsonl", "l1"), out("models/foundation", "fd.dir")],
                "outs": [out("models/selector", "sel.dir"), out("artifacts/scores.jsonl", "sc1")],
            },
            "curate": {
                "deps": [out("artifacts/scores.jsonl", "sc1")],
                "outs": [out("artifacts/curated", "cur.dir")],
            },
            "align": {"deps": [out("models/foundation", "fd.dir")], "outs": [out("models/base", "base.dir")]},
        },
    }
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    (tmp_path / "data.dvc").write_text(yaml.safe_dump({"outs": [{"path": "data", "md5": "raw.dir"}]}))
    (tmp_path / ".dvc").mkdir()  # a real repo has the .dvc/ folder, which "*.dvc" also matches
    return tmp_path, _md5(curated)


def test_lineage_walks_dvc_lock_upstream(repo):
    root, curated_md5 = repo
    arts = {a.path: a for a in lineage.lineage(["artifacts/curated/top40.json", "models/base"], root)}
    assert arts["artifacts/curated/top40.json"].md5 == curated_md5  # the file itself, as DVC hashes files
    assert arts["artifacts/curated/top40.json"].stage == "curate"
    assert arts["artifacts/curated"].md5 == "cur.dir"
    assert arts["models/base"].md5 == "base.dir" and arts["models/base"].source == "dvc.lock"
    for path, md5 in [
        ("models/selector", "sel.dir"),
        ("artifacts/scores.jsonl", "sc1"),
        ("artifacts/labels.jsonl", "l1"),
        ("artifacts/sample.jsonl", "s1"),
        ("models/foundation", None),  # a dependency no stage in this lock produces: not claimed
    ]:
        assert path in arts
        if md5:
            assert arts[path].md5 == md5
    assert arts["data/corpus/figures.jsonl"].md5 == "f1"  # as the sample stage locked it
    assert arts["data"].md5 == "raw.dir" and arts["data"].source == "data.dvc"  # raw data holding it


def test_lineage_without_dvc_lock_computes_digests(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("x")
    arts = lineage.lineage(["d", "missing.json", "llava-hf/llava-1.5-13b-hf"], tmp_path)
    by = {a.path: a for a in arts}
    assert by["d"].source == "computed" and by["d"].md5.endswith(".dir")
    assert by["missing.json"].source == "missing" and by["missing.json"].md5 is None
    assert by["llava-hf/llava-1.5-13b-hf"].source == "hub"


def test_log_tune_registers_model_with_input_digests(repo, monkeypatch):
    root, curated_md5 = repo
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns.db'}")
    mp = MlflowParams(experiment="test", registered_model="vital-llava-test")
    inputs = {"base": "models/base", "curated": root / "artifacts/curated/top40.json"}
    rec = lineage.log_tune(
        {"method": "lora", "lora": {"r": 4}},
        {"final_loss": 0.5, "steps": 3, "method": "lora"},
        inputs,
        root / "models/tuned",
        mp,
        root,
    )
    assert rec["version"] == "1"
    back = lineage.walk_back("vital-llava-test", rec["version"], root)
    assert back["run_id"] == rec["run_id"]
    assert back["source"] == "models/tuned"  # relative to the repository
    assert back["params"]["lora.r"] == "4"
    assert back["tags"]["dvc.curated.artifacts/curated/top40.json"].startswith(curated_md5)
    assert back["tags"]["dvc.base.models/base"] == "base.dir (dvc.lock)"
    assert back["tags"]["dvc.select.models/selector"] == "sel.dir (dvc.lock)"
    assert "git_commit" in back["tags"]
    inputs_by_path = {i["path"]: i for i in back["inputs"]}
    assert inputs_by_path["artifacts/labels.jsonl"]["md5"] == "l1"
    assert inputs_by_path["artifacts/labels.jsonl"]["role"] == "labels"
    assert inputs_by_path["artifacts/curated/top40.json"]["role"] == "curated"
    # A second tune registers version 2 of the same model.
    rec2 = lineage.log_tune({"method": "full"}, {}, inputs, root / "models/tuned", mp, root)
    assert rec2["version"] == "2"


def test_tracking_uri_default_and_override(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert lineage.tracking_uri(tmp_path) == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert lineage.tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def test_tag_keys_of_matrix_stages_are_valid_mlflow_names():
    # a fine-tuned model's upstream includes the tune@<subset>-<seed> matrix stages; MLflow refuses "@"
    assert lineage.tag_key("dvc.tune@top-0.models/tuned/top-s0") == "dvc.tune_top-0.models/tuned/top-s0"
    assert lineage.tag_key("dvc.base.models/base") == "dvc.base.models/base"


def _registered(root, name):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(lineage.tracking_uri(root))
    return [str(v.version) for v in MlflowClient().search_model_versions(f"name='{name}'")]


def test_foundation_run_logs_its_model_in_a_pipeline_repo(tmp_path, monkeypatch):
    """vital.foundation.run calls log_stage: with the mlflow params in force it registers `vital-foundation`,
    without them (a library call) or with `enabled: false` nothing."""
    import torch

    from vital.foundation import build_tiny_clip, run
    from vital.params import FoundationParams
    from vital.paths import Paths

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    model, _, _ = build_tiny_clip(FoundationParams())
    ckpt = tmp_path / "w.pt"
    torch.save(model.state_dict(), ckpt)
    fp = FoundationParams(backend="pretrained", clip="vital-tiny-clip", clip_pretrained=str(ckpt))
    bare = tmp_path / "bare"
    run(fp, Paths(bare))
    assert not (bare / "mlflow.db").exists()  # no mlflow params: not a pipeline run, nothing logged

    repo = tmp_path / "repo"
    (repo / "data" / "corpus").mkdir(parents=True)
    (repo / "data" / "corpus" / "figures.jsonl").write_text('{"pair_id": "a"}\n')
    run(fp, Paths(repo), MlflowParams(experiment="vital"))
    assert _registered(repo, "vital-foundation") == ["1"]
    back = lineage.walk_back("vital-foundation", 1, repo)
    assert back["source"] == "models/foundation"
    assert back["tags"]["vital.stage"] == "foundation"
    corpus = next(i for i in back["inputs"] if i["path"] == "data/corpus")
    assert corpus["role"] == "corpus" and corpus["md5"] == dvc_repo.dir_md5(repo / "data" / "corpus")[:36]

    run(fp, Paths(repo), MlflowParams(enabled=False))
    assert _registered(repo, "vital-foundation") == ["1"]  # mlflow.enabled: false logs nothing


def test_a_stage_logs_as_its_params_file_says_not_as_params_yaml(tmp_path, monkeypatch):
    """Before: log_stage re-read <root>/params.yaml, so `--params paper.yaml` with MLflow on logged nothing
    when params.yaml had it off (and logged when the file in force had it off)."""
    import torch

    from vital.foundation import build_tiny_clip
    from vital.foundation import run_stage as foundation
    from vital.params import FoundationParams
    from vital.stage import run_stage

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    model, _, _ = build_tiny_clip(FoundationParams())
    torch.save(model.state_dict(), tmp_path / "w.pt")
    (tmp_path / "data" / "corpus").mkdir(parents=True)
    (tmp_path / "data" / "corpus" / "figures.jsonl").write_text('{"pair_id": "a"}\n')
    fp = {"backend": "pretrained", "clip": "vital-tiny-clip", "clip_pretrained": str(tmp_path / "w.pt")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"foundation": fp, "mlflow": {"enabled": False}}))
    (tmp_path / "on.yaml").write_text(yaml.safe_dump({"foundation": fp, "mlflow": {"experiment": "lab"}}))
    run_stage("foundation", foundation, "on.yaml")
    assert _registered(tmp_path, "lab-foundation") == ["1"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"foundation": fp, "mlflow": {"experiment": "lab"}}))
    (tmp_path / "off.yaml").write_text(yaml.safe_dump({"foundation": fp, "mlflow": {"enabled": False}}))
    run_stage("foundation", foundation, "off.yaml")
    assert _registered(tmp_path, "lab-foundation") == ["1"]


def test_select_run_logs_its_model_with_pairs_labels_judgments(tmp_path, monkeypatch):
    from tests.test_selector import synthetic
    from vital.params import SelectorParams
    from vital.selector import run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    paths = synthetic(tmp_path / "repo", figures=60)
    run(SelectorParams(human_weight=1, epochs=2, compare_weights=[]), paths, MlflowParams(experiment="vital"))
    back = lineage.walk_back("vital-select", 1, paths.root)
    roles = {i["role"]: i for i in back["inputs"]}
    assert {"embeddings", "pairs", "judgments", "labels"} <= set(roles)
    assert roles["pairs"]["md5"] == dvc_repo.file_md5(paths.pairs) and roles["pairs"]["direct"] == "True"
    assert back["params"]["human_weight"] == "1.0"
    assert back["source"] == "models/selector"


def test_inputs_name_the_default_remote_object(tmp_path):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text(
        "[core]\n    remote = team\n['remote \"team\"']\n    url = s3://bucket/store\n"
    )
    assert dvc_repo.default_remote(tmp_path) == "s3://bucket/store"
    assert (
        dvc_repo.remote_object("s3://bucket/store", "ab12cd.dir") == "s3://bucket/store/files/md5/ab/12cd.dir"
    )
    (tmp_path / ".dvc" / "config").write_text(
        "[core]\n    remote = demo\n['remote \"demo\"']\n    url = ../store\n"
    )
    assert dvc_repo.default_remote(tmp_path) == str((tmp_path / "store").resolve())


def test_each_tune_is_registered_on_its_own_by_subset_and_seed(repo, monkeypatch):
    """Before: every tune registered as one `vital-llava`, so its latest version was whichever ran last."""
    from vital import tune as tune_stage
    from vital.params import Params
    from vital.paths import Paths

    root, _ = repo
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns.db'}")
    (root / "artifacts" / "curated" / "random40.json").write_text("[]")

    def fake_run(*, out, tp, **_):
        Path(out).mkdir(parents=True, exist_ok=True)
        return {"final_loss": 0.25 + tp.seed, "steps": 3}

    from vital.llava import tune as llava_tune

    monkeypatch.setattr(llava_tune, "run", fake_run)
    p = Params()
    for subset, seed in [("top", 0), ("random", 1), ("top", 1)]:
        tune_stage.run_stage(p, Paths(root), subset, seed)
    for subset, seed in [("top", 0), ("random", 1), ("top", 1)]:
        name, version = lineage.resolve_version(f"vital-llava-{subset}-s{seed}", root)
        back = lineage.walk_back(name, version, root)
        assert version == "1"
        assert back["source"] == f"models/tuned/{subset}-s{seed}"  # relative to the repository
        assert back["tags"]["vital.subset"] == subset and back["tags"]["vital.seed"] == str(seed)
        assert back["params"]["seed"] == str(seed)
    with pytest.raises(LookupError):
        lineage.resolve_version("vital-llava", root)
