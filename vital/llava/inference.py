"""Batched greedy answering of VQA questions with a Hugging Face LLaVA checkpoint.

The checkpoint is loaded the way any ``LlavaForConditionalGeneration`` is (local directory or hub id),
and each question is rendered with the checkpoint's own chat template, so the demo model and
``llava-hf/llava-1.5-13b-hf`` go through the same path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from vital.progress import progress
from vital.shards import open_image
from vital.vqa.items import VQAItem

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected auto or one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def _check_checkpoint(model_dir: str | Path) -> str:
    name = str(model_dir)
    local = Path(name)
    # A hub id is "owner/name"; anything else (absolute, ./x, a/b/c, or an existing path) is a directory.
    looks_local = local.is_absolute() or name.startswith(".") or local.exists() or name.count("/") != 1
    if looks_local and not (local / "config.json").is_file():
        raise FileNotFoundError(f"{local}: not a Hugging Face checkpoint directory (no config.json)")
    return name


class LlavaAnswerer:
    """Loads one checkpoint once and answers any number of question lists with it."""

    def __init__(self, model_dir: str | Path, device: str = "auto", dtype: str = "auto"):
        name = _check_checkpoint(model_dir)
        self.model_id = name
        self.device = resolve_device(device)
        self.model = LlavaForConditionalGeneration.from_pretrained(
            name, dtype=resolve_dtype(dtype, self.device)
        )
        self.model.to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(name)
        if getattr(self.processor, "chat_template", None) is None:
            raise ValueError(f"{name}: the processor has no chat template (save one with the checkpoint)")
        tok = self.processor.tokenizer
        tok.padding_side = "left"  # generation continues from the right edge of every row
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token

    def prompt(self, question: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    @torch.no_grad()
    def _generate(self, batch: Sequence[VQAItem], max_new_tokens: int) -> list[str]:
        images = [_rgb(item) for item in batch]
        inputs = self.processor(
            images=images, text=[self.prompt(i.question) for i in batch], padding=True, return_tensors="pt"
        ).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        tok = self.processor.tokenizer
        out = self.model.generate(
            **inputs,
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        new = out[:, inputs["input_ids"].shape[1] :]
        return [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]

    def answer(
        self, items: Sequence[VQAItem], batch_size: int = 8, max_new_tokens: int = 16, desc: str = "answer"
    ) -> list[str]:
        """Greedy answers in the order of ``items``."""
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f"batch_size={batch_size} and max_new_tokens={max_new_tokens} must be >= 1")
        # Similar question lengths share a batch (less padding); answers go back to the input order.
        order = sorted(range(len(items)), key=lambda i: len(items[i].question))
        answers: list[str] = [""] * len(items)
        with progress(total=len(items), desc=desc) as bar:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                for i, text in zip(idx, self._generate([items[i] for i in idx], max_new_tokens), strict=True):
                    answers[i] = text
                bar.update(len(idx))
        return answers


def _rgb(item: VQAItem) -> Image.Image:
    try:
        with open_image(item.image_path) as im:
            return im.convert("RGB")
    except OSError as e:
        raise OSError(f"question {item.question_id}: cannot read image {item.image_path} ({e})") from None


def answer(
    model_dir: str | Path,
    items: Sequence[VQAItem],
    batch_size: int = 8,
    max_new_tokens: int = 16,
    device: str = "auto",
    dtype: str = "auto",
) -> list[str]:
    """Load ``model_dir`` and answer every item greedily (one string per item, in order)."""
    return LlavaAnswerer(model_dir, device=device, dtype=dtype).answer(items, batch_size, max_new_tokens)
