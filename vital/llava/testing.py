"""Tiny LLaVA fixtures for tests (this package's and the evaluation's): built in seconds, offline.

``tiny_base(dir)`` writes a complete checkpoint (model + processor + chat template) that loads with
``LlavaForConditionalGeneration.from_pretrained`` / ``AutoProcessor.from_pretrained``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from vital.demo.llava import build_tiny_llava
from vital.demo.tokenizer import train_tokenizer
from vital.llava.build import save_llava
from vital.params import AlignParams, FoundationParams

SIDES = ("left", "right")


def lesion_image(side: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """A grey phantom with one bright blob in the left or right half."""
    img = rng.normal(60, 12, (size, size)).clip(0, 255)
    cx = rng.integers(size // 8, size // 2 - size // 8) + (size // 2 if side == "right" else 0)
    cy = rng.integers(size // 4, 3 * size // 4)
    yy, xx = np.mgrid[:size, :size]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 10) ** 2] = 230
    return Image.fromarray(np.repeat(img.astype("uint8")[..., None], 3, axis=2))


def side_records(root: Path, n: int, seed: int = 0, size: int = 64) -> list[dict]:
    """``n`` LLaVA records asking which side the lesion is on; images under ``root/images``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        side = SIDES[i % 2]
        name = f"images/{seed}_{i:04d}.png"
        lesion_image(side, rng, size).save(root / name)
        records.append(
            {
                "id": f"s{seed}-{i}",
                "image": name,
                "conversations": [
                    {"from": "human", "value": "<image>\nWhich side is the lesion on?"},
                    {"from": "gpt", "value": side},
                ],
            }
        )
    return records


def write_llava_json(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def tiny_base(out: Path, width: int = 64, image_size: int = 64, patch_size: int = 16, seed: int = 0) -> Path:
    """A random tiny LLaVA (2-layer open_clip ViT converted + 2-layer Llama) saved to ``out``."""
    from vital.foundation.clip import build_tiny_clip

    fp = FoundationParams(
        width=width, embed_dim=width, image_size=image_size, patch_size=patch_size, seed=seed
    )
    clip, _, _ = build_tiny_clip(fp)
    texts = ["Which side is the lesion on? left right", "Describe the image concisely."] * 50
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_tokenizer(texts, 300, Path(tmp))
    model, processor = build_tiny_llava(clip.visual, tokenizer, AlignParams(hidden_size=width, seed=seed))
    return save_llava(model, processor, Path(out))


# The chat template llava-hf/llava-1.5-7b-hf (and -13b-hf) ships in chat_template.json, as transformers' own
# tests/models/llava/test_processor_llava.py spells it: an assistant turn renders as "{answer} " (no EOS).
LLAVA_HF_15_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in "
    "message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}"
    "{% endgeneration %}{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}"
    "{% endif %}"
)


def llama_style_tokenizer(texts: list[str], out: Path, vocab_size: int = 500):
    """A Llama-style ``LlamaTokenizer`` (Metaspace "▁" words, byte fallback, BOS prepended) with BPE pieces
    trained on ``texts`` inside words only, as SentencePiece makes them; ``<pad>`` and ``<image>`` added as
    llava-hf adds them. Saved to ``out`` with ``save_pretrained`` and loaded back with ``AutoTokenizer``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, LlamaTokenizer

    core = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=True)
    byte_pieces = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", *byte_pieces], show_progress=False
    )
    core.train_from_iterator(texts, trainer)
    bpe = json.loads(core.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in bpe["merges"]]
    tok = LlamaTokenizer(vocab=bpe["vocab"], merges=merges, add_bos_token=True)
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.add_tokens(["<image>"], special_tokens=True)
    tok.save_pretrained(out)
    return AutoTokenizer.from_pretrained(out, extra_special_tokens={"image_token": "<image>"})


def llava_hf_style_base(out: Path, width: int = 32, image_size: int = 32, patch_size: int = 16) -> Path:
    """A random tiny LLaVA with a Llama-style tokenizer and llava-hf 1.5's chat template, saved to ``out``."""
    from vital.demo.llava import make_processor
    from vital.foundation.clip import build_tiny_clip

    fp = FoundationParams(width=width, embed_dim=width, image_size=image_size, patch_size=patch_size)
    clip, _, _ = build_tiny_clip(fp)
    texts = [
        "USER: <image>\nWhich side is the lesion on? ASSISTANT: Yes. The lesion is on the left. No, right.",
        "Is there a mass? Describe the image concisely. What is shown in this image?",
    ] * 50
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = llama_style_tokenizer(texts, Path(tmp))
        model, _ = build_tiny_llava(clip.visual, tokenizer, AlignParams(hidden_size=width))
        processor = make_processor(clip.visual, tokenizer, chat_template=LLAVA_HF_15_CHAT_TEMPLATE)
        return save_llava(model, processor, Path(out))
