"""Tokenizer training and the tiny LLaVA checkpoint the rest of the pipeline loads with from_pretrained."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

from vital.demo.llava import build_tiny_llava
from vital.demo.tokenizer import train_tokenizer
from vital.foundation.clip import build_tiny_clip
from vital.llava.build import load_llava, save_llava
from vital.llava.conversation import num_image_tokens
from vital.params import AlignParams, FoundationParams

TEXTS = ["A CT scan shows a lesion on the left side of the chest.", "Histology: H&E stained section."] * 40


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava")
    tok = train_tokenizer(TEXTS, 320, root / "tokenizer")
    clip, preprocess, _ = build_tiny_clip(FoundationParams(seed=1))
    clip.eval()
    model, processor = build_tiny_llava(clip.visual, tok, AlignParams())
    save_llava(model, processor, root / "base")
    return root, clip, preprocess


def test_tokenizer_special_tokens_and_round_trip(tmp_path):
    train_tokenizer(TEXTS, 300, tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tok) == 300
    assert tok.image_token == "<image>"
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.image_token_id}) == 4
    assert tok.padding_side == "left"  # batched generation at evaluation
    ids = tok("a lesion <image> on the left</s>").input_ids
    assert ids[0] == tok.bos_token_id
    assert ids.count(tok.image_token_id) == 1 and ids[-1] == tok.eos_token_id
    text = "Ünïcode µm ≥ 5 mm — fine"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


def test_tokenizer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(TEXTS, 100, tmp_path)
    with pytest.raises(ValueError, match="no non-empty text"):
        train_tokenizer(["", "  "], 300, tmp_path)


def test_checkpoint_loads_through_auto_classes(built):
    root, clip, _ = built
    model = LlavaForConditionalGeneration.from_pretrained(root / "base")
    processor = AutoProcessor.from_pretrained(root / "base")
    assert type(processor).__name__ == "LlavaProcessor"
    assert model.config.image_token_index == processor.tokenizer.image_token_id
    # The vision tower carries the foundation encoder's weights.
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = clip.visual(x)
        pooled = model.model.vision_tower(pixel_values=x).pooler_output @ clip.visual.proj
    torch.testing.assert_close(pooled, ref, atol=1e-5, rtol=1e-4)


def test_chat_template_prompt_and_generation(built):
    root, _, preprocess = built
    model, processor = load_llava(root / "base")
    q = "Which side is the lesion on?"
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
    prompt = processor.apply_chat_template(msgs, add_generation_prompt=True)
    assert prompt == f"USER: <image>\n{q} ASSISTANT:"
    full = processor.apply_chat_template(msgs + [{"role": "assistant", "content": "left"}])
    assert full == prompt + " left</s>"
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    inputs = processor(images=[img], text=[prompt], return_tensors="pt")
    n_img = int((inputs.input_ids == processor.tokenizer.image_token_id).sum())
    assert n_img == num_image_tokens(processor) == 64  # (64/8)^2 patches, CLS dropped
    torch.testing.assert_close(inputs.pixel_values[0], preprocess(img), atol=1e-5, rtol=1e-5)
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs.input_ids.shape[1] + 3 or out[0, -1] == processor.tokenizer.eos_token_id


def test_load_llava_names_a_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_llava(tmp_path / "nope")


def test_hidden_size_must_divide_heads(built):
    _, clip, _ = built
    tok = AutoTokenizer.from_pretrained(built[0] / "tokenizer")
    with pytest.raises(ValueError, match="align.hidden_size"):
        build_tiny_llava(clip.visual, tok, AlignParams(hidden_size=66, heads=4))
