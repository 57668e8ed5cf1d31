"""End-to-end selector: live features equal the embed stage's, the backbone trains, weights are saved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_embed import world as embed_world

from vital.embed import run as embed
from vital.embed.store import load_embeddings
from vital.foundation.clip import WEIGHTS_NAME
from vital.io import RecordError, write_jsonl
from vital.pairs import run as make_pairs
from vital.params import EmbedParams, PairsParams, ParamsError, SelectorParams
from vital.paths import Paths
from vital.selector import RatingHead, embedding_features, run
from vital.selector.backbone import BACKBONE_WEIGHTS, build_rater

torch.set_num_threads(1)
# Candidate c of every figure answers ["left", "right", "unsure"][c]; everybody ranks by this order.
QUALITY = {"#1": 2.0, "#0": 1.0, "#2": 0.0}


def world(root: Path, figures: int = 30) -> Paths:
    paths = embed_world(root, figures=figures)
    embed(EmbedParams(batch_size=16), paths)
    cands = [json.loads(x) for x in paths.candidates.read_text().splitlines()]
    score = {c["id"]: QUALITY[c["id"][-2:]] for c in cands}
    write_jsonl(
        paths.judgments,
        [{"candidate_id": c["id"], "pair_id": c["pair_id"], "score": 3 + 3 * score[c["id"]]} for c in cands],
    )
    labelled = sorted({c["pair_id"] for c in cands})[::2]
    write_jsonl(
        paths.labels,
        [
            {
                "pair_id": p,
                "annotator": "c1",
                "ranking": sorted((f"{p}#{k}" for k in range(3)), key=lambda c: -score[c]),
            }
            for p in labelled
        ],
    )
    make_pairs(PairsParams(heldout_fraction=0.4, val_fraction=0.2), paths)
    return paths


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> Paths:
    return world(tmp_path_factory.mktemp("e2e"))


def test_live_features_match_the_embed_stage(paths: Paths):
    """Before any training, the end-to-end rater sees exactly the features the frozen head sees."""
    emb = load_embeddings(paths.embeddings)
    x = embedding_features(emb)
    captured = {}
    head = RatingHead(x.shape[1], 8, 0.0)
    head.register_forward_hook(lambda m, inp, out: captured.setdefault("x", inp[0].detach()))
    rater = build_rater(emb, head, SelectorParams(finetune_backbone="full"), paths).eval()
    idx = torch.tensor([0, 5, 7, 30])
    with torch.no_grad():
        rater(idx)
    torch.testing.assert_close(captured["x"], x[idx], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["text", "full"])
def test_backbone_trains_with_the_head(paths: Paths, mode: str):
    sp = SelectorParams(
        finetune_backbone=mode,
        backbone_lr=1e-3,
        lr=3e-3,
        hidden=16,
        epochs=4,
        patience=4,
        batch_size=32,
        human_weight=10,
        compare_weights=[],
        judge_input="none",  # the head and backbone alone: a residual on the judge may keep the judge as it is
    )
    m = run(sp, paths)
    assert m["finetune_backbone"] == mode and m["epochs_run"] == 4
    h = m["heldout_human"]
    assert h["pairs"] > 0 and h["selector"]["agreement"] > 0.8  # the order is in the answer words
    cfg = json.loads((paths.selector / "config.json").read_text())
    assert cfg["backbone_weights"] == BACKBONE_WEIGHTS and cfg["params"]["finetune_backbone"] == mode
    tuned = load_file(str(paths.selector / BACKBONE_WEIGHTS))
    base = load_file(str(paths.foundation / "clip" / WEIGHTS_NAME))
    assert tuned.keys() == base.keys()
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert any(k.startswith("transformer.") for k in changed)  # the text tower
    assert any(k.startswith("visual.") for k in changed) == (mode == "full")


def test_backbone_needs_a_loadable_model(tmp_path: Path):
    from test_selector import synthetic

    p = synthetic(tmp_path, figures=20)
    with pytest.raises(Exception, match="no loadable backbone"):
        run(SelectorParams(finetune_backbone="text", epochs=1, compare_weights=[]), p)


def test_unusable_device_fails_before_any_work(tmp_path: Path):
    with pytest.raises(ParamsError, match=r"selector.device='gpu0'"):
        run(SelectorParams(device="gpu0"), Paths(tmp_path))
    if not torch.cuda.is_available():
        with pytest.raises(ParamsError, match="no CUDA device"):
            run(SelectorParams(device="cuda"), Paths(tmp_path))


def test_image_gone_since_embed_is_named(paths: Paths, tmp_path: Path):
    import shutil

    copy = Paths(tmp_path / "p")
    shutil.copytree(paths.root, copy.root, symlinks=True)
    first = json.loads(copy.sample.read_text().splitlines()[0])
    (copy.corpus / first["image"]).write_bytes(b"not a png")
    emb = load_embeddings(copy.embeddings)
    x = embedding_features(emb)
    with pytest.raises(RecordError, match=first["pair_id"]):
        build_rater(emb, RatingHead(x.shape[1], 4, 0.0), SelectorParams(finetune_backbone="full"), copy)
