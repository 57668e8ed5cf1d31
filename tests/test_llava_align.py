"""Stage 1 (align): foundation dir -> tiny LLaVA trained on captions -> complete models/base checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from vital.demo.llava import build_from_foundation
from vital.demo.tokenizer import train_tokenizer
from vital.foundation.clip import build_tiny_clip, load_clip, save_clip, tiny_clip_config
from vital.llava import align
from vital.llava.testing import side_records
from vital.params import AlignParams, FoundationParams


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    fp = FoundationParams(width=32, embed_dim=32, patch_size=16, seed=2)
    clip, _, _ = build_tiny_clip(fp)
    save_clip(clip, tiny_clip_config(fp), root / "foundation" / "clip")
    records = side_records(root / "corpus", 12)
    figures = [
        {
            "pair_id": r["id"],
            "pmid": "1",
            "fig_caption": f"Axial CT, lesion on the {r['conversations'][1]['value']}.",
            "image": r["image"],
        }
        for r in records
    ]
    figures.append({"pair_id": "gone", "pmid": "1", "fig_caption": "x", "image": "images/gone.png"})
    (root / "corpus" / "figures.jsonl").write_text("\n".join(json.dumps(f) for f in figures) + "\n")
    train_tokenizer((f["fig_caption"] for f in figures), 300, root / "foundation" / "tokenizer")
    return root


def _run(world, **kw):
    ap = AlignParams(backend="demo", hidden_size=32, heads=2, steps=6, batch_size=4, seed=0, **kw)
    return align.run(
        world / "foundation",
        world / "corpus" / "figures.jsonl",
        world / "corpus",
        world / "base",
        ap,
        checkpoint_dir=world / "ckpt",
        metrics_path=world / "align.json",
        curve_path=world / "align.csv",
        build_base=build_from_foundation,
    )


def test_align_builds_a_loadable_base_and_trains_projector_and_lm(world):
    m = _run(world)
    assert m["examples"] == 12 and m["dropped"] == 1 and m["dropped_by_reason"] == {"image file missing": 1}
    assert m["steps"] == 6 and m["final_loss"] < m["first_loss"]
    assert len((world / "align.csv").read_text().splitlines()) == 7
    model = LlavaForConditionalGeneration.from_pretrained(world / "base")
    processor = AutoProcessor.from_pretrained(world / "base")
    assert processor.tokenizer.image_token == "<image>"
    assert model.config.vision_feature_layer == -1
    # The frozen vision tower is still the foundation encoder.
    clip, _, _ = load_clip(world / "foundation" / "clip")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled = model.model.vision_tower(pixel_values=x).pooler_output @ clip.visual.proj
        torch.testing.assert_close(pooled, clip.visual(x), atol=1e-5, rtol=1e-4)


def test_projector_only_alignment_keeps_the_language_model(world):
    m = _run(world, trainable="projector")
    assert m["trainable_params"] < 10_000


def test_missing_foundation_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="foundation stage"):
        align.run(
            tmp_path,
            tmp_path / "f.jsonl",
            tmp_path,
            tmp_path / "b",
            AlignParams(backend="demo"),
            tmp_path / "c",
            build_base=build_from_foundation,
        )


def test_caption_conversations_pick_instructions_deterministically(world):
    figs = world / "corpus" / "figures.jsonl"
    a = list(align.caption_conversations(figs, ["one?", "two?"], seed=0))
    b = list(align.caption_conversations(figs, ["one?", "two?"], seed=0))
    assert a == b and {r["conversations"][0]["value"] for r in a} == {"<image>\none?", "<image>\ntwo?"}
    assert a[0]["conversations"][1]["value"].startswith("Axial CT")


def test_pretrained_base_with_no_steps_is_recorded_not_copied(tmp_path, monkeypatch):
    from vital import hub
    from vital.llava import align
    from vital.params import AlignParams

    commit = "f" * 40  # the hub's answer (tests/test_hub.py resolves against a stand-in hub server)
    monkeypatch.setattr(
        hub, "resolve", lambda param, spec, rev, root=None: hub.Resolved(param, spec, spec, rev, commit)
    )
    out = tmp_path / "models" / "base"
    rec = align.run(
        foundation_dir=tmp_path / "unused",
        figures=tmp_path / "unused.jsonl",
        corpus_root=tmp_path,
        out=out,
        ap=AlignParams(backend="pretrained", model="llava-hf/llava-1.5-13b-hf", steps=0),
        checkpoint_dir=tmp_path / "ck",
        metrics_path=tmp_path / "metrics" / "align.json",
    )
    assert rec["model"] == "llava-hf/llava-1.5-13b-hf"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.json"]
    assert "align.steps is 0" in rec["skipped"]  # the skip and its reason are recorded
    assert rec["hub"] == {
        "param": "align.model",
        "spec": "llava-hf/llava-1.5-13b-hf",
        "repo": "llava-hf/llava-1.5-13b-hf",
        "revision": None,
        "commit": commit,
    }


def test_pretrained_base_with_steps_aligns_on_the_sampled_figures_not_the_corpus(world, tmp_path):
    """LLaVA-Med's stage 1 in the paper profile: the captions are artifacts/sample.jsonl's, never a fixed path."""
    import shutil

    from vital.corpus_paths import align_reads
    from vital.llava.testing import tiny_base
    from vital.params import Params
    from vital.paths import Paths

    paths = Paths(tmp_path)
    shutil.copytree(world / "corpus", paths.corpus)
    sampled = paths.figures.read_text().splitlines()[:5]  # the sample: 5 of the corpus' 13 records
    paths.sample.parent.mkdir(parents=True)
    paths.sample.write_text("\n".join(sampled) + "\n")
    paths.figures.write_text("not json\n")  # the corpus file must not be read
    checkpoint = tiny_base(tmp_path / "checkpoints" / "llava", width=32, image_size=32, patch_size=8)
    ap = AlignParams(backend="pretrained", model=str(checkpoint), steps=2, batch_size=2)
    metrics = align.train_stage(ap, paths)
    assert metrics["captions"] == str(paths.sample) and metrics["examples"] == 5
    assert (paths.base_model / "config.json").is_file()
    params = Params(align=ap)
    assert align_reads(params, tmp_path) == ["artifacts/sample.jsonl", "data/corpus/images"]
    assert align_reads(Params(), tmp_path) == []  # the demo's restore reads no sample
