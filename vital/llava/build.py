"""Load and save Hugging Face LLaVA checkpoints (a hub id or a local directory), and LLaVA-1.5's image
aspect-ratio setting. The demo's tiny LLaVA is assembled in vital.demo.llava."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoProcessor,
    LlavaForConditionalGeneration,
    LlavaImageProcessor,
    LlavaImageProcessorPil,
    LlavaProcessor,
)


def load_llava(name_or_dir: str | Path, dtype: torch.dtype | None = None, **from_pretrained):
    """``(model, processor)`` from a hub id or a local checkpoint directory, with a clear error if absent.

    Extra keyword arguments (``quantization_config``, ``device_map``) go to the model's ``from_pretrained``.
    """
    name = str(name_or_dir)
    local = Path(name)
    looks_local = local.is_absolute() or name.startswith(".") or local.exists() or name.count("/") != 1
    if looks_local and not (local / "config.json").is_file():
        raise FileNotFoundError(f"{local}: not a Hugging Face checkpoint directory (no config.json)")
    model = LlavaForConditionalGeneration.from_pretrained(name, dtype=dtype, **from_pretrained)
    processor = AutoProcessor.from_pretrained(name)
    return model, processor


_IMAGE_SETTINGS = (
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "do_convert_rgb",
)


def set_image_aspect_ratio(processor: LlavaProcessor, mode: str) -> LlavaProcessor:
    """``pad``: images are padded to a square with the colour of ``image_mean`` before the processor's resize
    and crop (LLaVA-1.5's ``image_aspect_ratio: pad``, its ``expand2square``); ``crop``: resized and centre
    cropped only. A CLIP image processor becomes transformers' ``LlavaImageProcessor`` with the same settings
    and ``do_pad`` (which pads exactly so), so the checkpoint saved with it preprocesses the same way at
    evaluation."""
    images = processor.image_processor
    # Only LLaVA's image processors pad to a square (other processors' do_pad pads to a fixed pad_size).
    squares = isinstance(images, (LlavaImageProcessor, LlavaImageProcessorPil))
    if not squares and mode == "crop":
        return processor
    settings = images.to_dict()
    # a new processor: transformers reads do_pad at construction, not from the attribute set later
    cls = type(images) if squares else LlavaImageProcessor
    keep = {k: settings[k] for k in _IMAGE_SETTINGS if k in settings}
    processor.image_processor = cls(**keep, do_pad=mode == "pad")
    return processor


def save_llava(model: LlavaForConditionalGeneration, processor: LlavaProcessor, out: Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
