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

from vital.llava.build import build_tiny_llava, save_llava
from vital.llava.tokenizer import train_tokenizer
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
