"""data/pretrained: restore copies the stored checkpoints byte for byte; `vital pretrain` retrains them
from scratch and reports any byte that differs; a stored checkpoint trained with other params is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.test_foundation import make_corpus, tiny_params
from vital.demo.pretrain import pretrain
from vital.demo.pretrained import compare_trees, restore_foundation, training_params, tree_md5
from vital.failures import StageFailed
from vital.foundation import run as run_foundation
from vital.llava import align
from vital.params import AlignParams, FoundationParams, Params
from vital.paths import Paths

torch.set_num_threads(1)


def test_compare_trees_names_missing_extra_and_changed_files(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "sub").mkdir(parents=True)
        (root / "sub" / "same.bin").write_bytes(b"\x00\x01")
    assert compare_trees(a, b) == []
    (a / "only_a.txt").write_text("x")
    (b / "only_b.txt").write_text("y")
    (b / "sub" / "same.bin").write_bytes(b"\x00\x02")
    problems = compare_trees(a, b)
    assert any("only_a.txt: missing" in p for p in problems)
    assert any("only_b.txt: extra" in p for p in problems)
    assert any("sub/same.bin: bytes differ" in p for p in problems)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        tree_md5(tmp_path / "nowhere")


def _fake_store(root: Path, fp: FoundationParams) -> Path:
    store = root / "data" / "pretrained"
    (store / "foundation" / "clip").mkdir(parents=True)
    (store / "foundation" / "clip" / "w.bin").write_bytes(b"weights")
    (store / "metrics").mkdir()
    (store / "metrics" / "foundation.json").write_text(json.dumps({"steps": fp.steps, "final_loss": 0.5}))
    (store / "metrics" / "foundation_loss.csv").write_text("step,loss\n1,0.5\n")
    record = {"foundation": training_params(fp), "align": training_params(AlignParams())}
    (store / "params.json").write_text(json.dumps(record))
    return store


def test_restore_copies_bytes_and_refuses_other_params(tmp_path: Path):
    fp = FoundationParams(backend="restore")
    store = _fake_store(tmp_path, fp)
    paths = Paths(tmp_path)
    (paths.foundation / "stale").mkdir(parents=True)  # what a previous run left is replaced
    metrics = run_foundation(fp, paths)
    assert tree_md5(paths.foundation) == tree_md5(store / "foundation")
    assert (paths.plots / "foundation_loss.csv").read_text() == "step,loss\n1,0.5\n"
    saved = metrics  # the record run_stage writes as metrics/detail/foundation.json
    assert (
        saved["backend"] == "restore"
        and saved["trained"]["final_loss"] == 0.5 == metrics["trained"]["final_loss"]
    )
    assert saved["restored_from"] == "data/pretrained/foundation" and saved["files"] == 1

    # the backend choice itself is not a training param: demo-trained and restored are the same checkpoint
    assert training_params(FoundationParams(backend="demo")) == training_params(fp)
    with pytest.raises(StageFailed, match=r"foundation\.steps is 7 but .* trained with 600"):
        restore_foundation(FoundationParams(backend="restore", steps=7), paths)
    (store / "params.json").unlink()
    with pytest.raises(StageFailed, match="params.json: missing"):
        restore_foundation(fp, paths)


@pytest.mark.slow
def test_pretrain_write_check_and_restore(tmp_path: Path):
    make_corpus(tmp_path, 48)
    params = Params(
        foundation=tiny_params(steps=5, vocab_size=300),
        align=AlignParams(hidden_size=32, heads=2, steps=3, batch_size=4, max_length=64),
    )
    assert pretrain(params, tmp_path, write=True) == []
    store = tmp_path / "data" / "pretrained"
    assert (store / "foundation" / "clip").is_dir() and (store / "foundation" / "tokenizer").is_dir()
    assert any((store / "base").glob("*.safetensors"))
    # from scratch again, in a fresh scratch folder: every model byte and loss-curve byte is the same
    assert pretrain(params, tmp_path) == []

    # restore puts exactly those bytes where downstream stages read them
    paths = Paths(tmp_path)
    restored = params.model_copy(
        update={
            "foundation": params.foundation.model_copy(update={"backend": "restore"}),
            "align": params.align.model_copy(update={"backend": "restore"}),
        }
    )
    run_foundation(restored.foundation, paths)
    metrics = align.run_stage(restored, paths)
    assert tree_md5(paths.foundation) == tree_md5(store / "foundation")
    assert tree_md5(paths.base_model) == tree_md5(store / "base")
    assert metrics["backend"] == "restore" and metrics["trained"]["steps"] == 3
    assert metrics["restored_from"] == "data/pretrained/base"

    # one changed byte in the store is reported by the check, naming the file
    weights = next((store / "base").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    problems = pretrain(params, tmp_path)
    assert len(problems) == 1 and weights.name in problems[0] and "bytes differ" in problems[0]
