"""Foundation encoders: the tiny open_clip CLIP trains, saves in open_clip's layout and loads back."""

from __future__ import annotations

import json
import random
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image, ImageDraw

from vital.foundation import build_tiny_clip, load_clip, resolve_backbone, run
from vital.foundation.clip import CONFIG_NAME, WEIGHTS_NAME
from vital.params import FoundationParams
from vital.paths import Paths

torch.set_num_threads(1)  # the test machine's cores are shared


def make_corpus(root: Path, n: int, size: int = 32, seed: int = 0) -> list[dict]:
    """A small world of phantoms with a bright lesion on the left or right (truth.jsonl records the side)."""
    rng = random.Random(seed)
    corpus = root / "data" / "corpus"
    figs, truth = [], []
    for i in range(n):
        side = rng.choice(["left", "right"])
        im = Image.new("RGB", (size, size), (20, 20, 20))
        d = ImageDraw.Draw(im)
        d.ellipse((2, 2, size - 2, size - 2), fill=(90, 90, 90))
        cx, cy, r = size * (0.3 if side == "left" else 0.7), size * 0.5 + rng.uniform(-3, 3), size / 10
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(230, 230, 230))
        rel = f"images/ct_scan/{i:06d}.png"
        (corpus / rel).parent.mkdir(parents=True, exist_ok=True)
        im.save(corpus / rel)
        caption = f"CT showing a lesion in the {side} lung." if i % 3 else "CT showing a lesion."
        figs.append(
            {
                "pair_id": f"fig{i:04d}",
                "pmid": str(1000 + i),
                "fig_caption": caption,
                "in_text_mention": [{"tokens": f"Figure {i} shows the mass."}],
                "domain": {"ct_scan": True},
                "image": rel,
            }
        )
        truth.append({"pair_id": f"fig{i:04d}", "findings": {"side": side}})
    (corpus / "figures.jsonl").write_text("".join(json.dumps(f) + "\n" for f in figs))
    (corpus / "truth.jsonl").write_text("".join(json.dumps(t) + "\n" for t in truth))
    return figs


def tiny_params(**kw) -> FoundationParams:
    base = dict(image_size=32, patch_size=8, width=32, layers=1, embed_dim=16, context_length=24, steps=40)
    return FoundationParams(**{**base, "backend": "demo", "batch_size": 16, "lr": 3e-3, **kw})


def test_tiny_clip_is_a_standard_open_clip_vit():
    model, preprocess, tokenizer = build_tiny_clip(FoundationParams())
    vis = model.visual
    assert isinstance(vis, open_clip.transformer.VisionTransformer)
    assert vis.attn_pool is None and vis.pool_type == "tok"
    assert len(vis.transformer.resblocks) == 2 and vis.conv1.kernel_size == (8, 8)
    assert isinstance(vis.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    assert tokenizer(["a lesion"]).shape == (1, 64)
    with torch.no_grad():
        assert model.encode_image(torch.zeros(2, 3, 64, 64)).shape == (2, 64)


def test_train_save_and_load_back(tmp_path: Path):
    make_corpus(tmp_path, 96)
    # one corrupt image: counted and named, not fatal
    figs = (tmp_path / "data/corpus/figures.jsonl").read_text().splitlines()
    bad = json.loads(figs[5])
    (tmp_path / "data/corpus" / bad["image"]).write_bytes(b"not a png")
    paths = Paths(tmp_path)
    fp = tiny_params()
    metrics = run(fp, paths)

    assert metrics["figures"] == 95 and metrics["dropped"] == 1
    assert metrics["dropped_examples"][0]["where"] == bad["pair_id"]
    assert metrics["final_loss"] < metrics["initial_loss"]
    assert metrics["steps"] == 40 and "laterality_probe" in metrics  # the record run_stage writes
    assert (paths.foundation / "tokenizer" / "tokenizer.json").is_file()
    curve = (paths.plots / "foundation_loss.csv").read_text().splitlines()
    assert curve[0] == "step,loss" and len(curve) == 41

    clip_dir = paths.foundation / "clip"
    assert (clip_dir / CONFIG_NAME).is_file() and (clip_dir / WEIGHTS_NAME).is_file()
    # the directory loads with plain open_clip too (the standard local-dir path)
    plain, _, plain_pre = open_clip.create_model_and_transforms(f"local-dir:{clip_dir}")
    model, preprocess, tokenizer = load_clip(clip_dir)
    assert tokenizer(["x"]).shape[1] == fp.context_length
    img = preprocess(Image.open(tmp_path / "data/corpus" / json.loads(figs[0])["image"])).unsqueeze(0)
    assert img.shape == (1, 3, 32, 32)
    plain.eval()
    with torch.no_grad():
        a, b = model.encode_image(img), plain.encode_image(img)
    assert torch.allclose(a, b)
    # the trained weights differ from a fresh init (so loading did load them)
    fresh, _, _ = build_tiny_clip(fp)
    with torch.no_grad():
        assert not torch.allclose(fresh.encode_image(img), a)


def test_load_by_name_with_local_checkpoint(tmp_path: Path):
    fp = FoundationParams()
    model, _, _ = build_tiny_clip(fp)
    ckpt = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    loaded, _, tok = load_clip("vital-tiny-clip", pretrained=str(ckpt))
    assert torch.equal(loaded.visual.conv1.weight, model.visual.conv1.weight)
    assert tok(["x"]).shape == (1, fp.context_length)


def test_backbone_resolution_errors(tmp_path: Path):
    hub = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    assert resolve_backbone(hub) == (hub, None)  # kept as is; open_clip fetches it where there is network
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        resolve_backbone(tmp_path)
    with pytest.raises(ValueError, match="not-a-model"):
        resolve_backbone("not-a-model")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        resolve_backbone("vital-tiny-clip", str(tmp_path / "missing.pt"))


def test_pretrained_backend_records_checkpoint(tmp_path: Path):
    model, _, _ = build_tiny_clip(FoundationParams())
    ckpt = tmp_path / "w.pt"
    torch.save(model.state_dict(), ckpt)
    paths = Paths(tmp_path)
    metrics = run(
        FoundationParams(backend="pretrained", clip="vital-tiny-clip", clip_pretrained=str(ckpt)), paths
    )
    rec = json.loads((paths.foundation / "clip" / "checkpoint.json").read_text())
    assert rec["checkpoint"] == str(ckpt) and rec["backend"] == "pretrained"
    assert metrics["open_clip_id"] == "vital-tiny-clip"


def test_mirror_text_swaps_sides_keeps_case():
    from vital.mirror import mirror_text

    assert (
        mirror_text("Left lesion in the right half; leftover.") == "Right lesion in the left half; leftover."
    )
    assert mirror_text("No lesion.") == "No lesion."
