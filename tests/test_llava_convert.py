"""open_clip VisionTransformer -> HF CLIPVisionModel: same function, same preprocessing."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from vital.llava.convert import ConversionError, convert_vision_tower, image_processor, projection


def _clip(**vision) -> open_clip.model.CLIP:
    vision_cfg = {"image_size": 64, "layers": 2, "width": 64, "head_width": 16, "patch_size": 8, **vision}
    text_cfg = {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}
    torch.manual_seed(0)
    model = open_clip.model.CLIP(embed_dim=32, vision_cfg=vision_cfg, text_cfg=text_cfg)
    # Random init leaves LayerNorms at identity; perturb them so a swapped/missing mapping shows up.
    with torch.no_grad():
        for m in model.visual.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
    return model.eval()


def _compare(visual: torch.nn.Module, size: int = 64) -> None:
    hf = convert_vision_tower(visual)
    x = torch.randn(3, 3, size, size)
    visual.output_tokens = True
    with torch.no_grad():
        pooled, tokens = visual(x)
        out = hf(pixel_values=x)
        hf_pooled = out.pooler_output @ projection(visual).T
        hf_tokens = getattr(hf, "vision_model", hf).post_layernorm(out.last_hidden_state[:, 1:])
    assert pooled.abs().max() > 1e-3  # not a degenerate all-zero comparison
    torch.testing.assert_close(hf_pooled, pooled, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(hf_tokens, tokens, atol=1e-5, rtol=1e-4)


def test_standard_vit_same_outputs():
    _compare(_clip().visual)


def test_layerscale_and_quick_gelu_same_outputs():
    model = _clip(ls_init_value=0.5)
    with torch.no_grad():
        for block in model.visual.transformer.resblocks:
            block.ls_1.gamma.uniform_(0.2, 1.5)
            block.ls_2.gamma.uniform_(0.2, 1.5)
    _compare(model.visual)
    qg = open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg={"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        text_cfg={"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 1},
        quick_gelu=True,
    ).eval()
    assert convert_vision_tower(qg.visual).config.hidden_act == "quick_gelu"
    _compare(qg.visual, size=32)


def test_foundation_tiny_clip_converts():
    from vital.foundation.clip import build_tiny_clip
    from vital.params import FoundationParams

    clip, _, _ = build_tiny_clip(FoundationParams(seed=3))
    _compare(clip.eval().visual)


@pytest.mark.parametrize(
    "vision, match",
    [
        ({"pool_type": "avg"}, "pool_type"),
        ({"attentional_pool": True, "attn_pooler_heads": 2, "attn_pooler_queries": 4}, "attentional"),
        ({"no_ln_pre": True}, "no_ln_pre"),
    ],
)
def test_unconvertible_variants_are_refused(vision, match):
    with pytest.raises(ConversionError, match=match):
        convert_vision_tower(_clip(**vision).visual)


def test_image_processor_matches_open_clip_preprocess():
    from vital.foundation.clip import build_tiny_clip
    from vital.params import FoundationParams

    model, preprocess, _ = build_tiny_clip(FoundationParams())
    proc = image_processor(model.visual)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    ours = proc(images=[img], return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(ours, preprocess(img), atol=1e-5, rtol=1e-5)
    # A larger, non-square image is resized (bicubic) and centre-cropped: allow resampling differences.
    img = Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8))
    ours = proc(images=[img], return_tensors="pt")["pixel_values"][0]
    ref = preprocess(img)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().mean() < 0.05
