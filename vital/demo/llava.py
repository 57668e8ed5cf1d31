"""Assemble the demo base model: foundation CLIP vision tower + a small Llama, as a HF LLaVA checkpoint.

The result is an ordinary ``LlavaForConditionalGeneration`` + ``LlavaProcessor`` directory, loadable with
``from_pretrained`` exactly like ``llava-hf/llava-1.5-13b-hf``; nothing downstream knows it is tiny.
``align_stage`` is align's ``demo`` backend: it builds that model from ``models/foundation`` and aligns it
on the whole demo corpus with the stage's own loop (vital.llava.align.run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerBase,
)

from vital.llava import align
from vital.llava.convert import convert_vision_tower, image_processor
from vital.params import AlignParams
from vital.paths import Paths

# LLaVA-1.5's conversation format ("USER: <image>\n{q} ASSISTANT: {a}</s>"), written for HF chat messages.
# Content may be a string or a list of {"type": "image"} / {"type": "text", "text": ...} parts; images are
# rendered first. With add_generation_prompt the prompt ends in "ASSISTANT:", and an assistant turn renders
# as " {answer}</s>" after it, so the prompt used at evaluation is a strict prefix of the training text.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- for p in parts if p['type'] == 'text' -%}{{ p['text'] }}{%- endfor -%}{{ ' ' }}"
    "{%- else -%}"
    "{%- if message['role'] == 'assistant' -%}{{ 'ASSISTANT: ' }}{%- else -%}{{ 'USER: ' }}{%- endif -%}"
    "{%- for p in parts if p['type'] == 'image' -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{%- for p in parts if p['type'] == 'text' -%}{{ p['text'] }}{%- endfor -%}"
    "{%- if message['role'] == 'assistant' -%}{{ eos_token }}{%- else -%}{{ ' ' }}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


def make_processor(
    visual: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    strategy: str = "default",
    chat_template: str = CHAT_TEMPLATE,
) -> LlavaProcessor:
    """A ``LlavaProcessor`` whose image processor reproduces the foundation encoder's preprocess."""
    if getattr(tokenizer, "image_token", None) is None:
        raise ValueError("tokenizer has no image_token; train it with vital.demo.tokenizer.train_tokenizer")
    tokenizer.chat_template = chat_template
    patch = visual.patch_size[0] if isinstance(visual.patch_size, tuple) else visual.patch_size
    return LlavaProcessor(
        image_processor=image_processor(visual),
        tokenizer=tokenizer,
        patch_size=int(patch),
        vision_feature_select_strategy=strategy,
        chat_template=chat_template,
        num_additional_image_tokens=1,  # the CLIP class token
    )


def llama_config(tokenizer: PreTrainedTokenizerBase, ap: AlignParams) -> LlamaConfig:
    if ap.hidden_size % ap.heads:
        raise ValueError(f"align.hidden_size={ap.hidden_size} must be a multiple of align.heads={ap.heads}")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=ap.hidden_size,
        intermediate_size=4 * ap.hidden_size,
        num_hidden_layers=ap.layers,
        num_attention_heads=ap.heads,
        num_key_value_heads=ap.heads,
        max_position_embeddings=ap.max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def build_tiny_llava(
    visual: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, ap: AlignParams
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A LLaVA with ``visual`` (converted, weights kept) as vision tower and a randomly initialised Llama."""
    vision = convert_vision_tower(visual)
    config = LlavaConfig(
        vision_config=vision.config,
        text_config=llama_config(tokenizer, ap),
        image_token_index=tokenizer.image_token_id,
        projector_hidden_act="gelu",
        vision_feature_select_strategy=ap.vision_feature_select_strategy,
        vision_feature_layer=ap.vision_feature_layer,
        image_seq_length=(vision.config.image_size // vision.config.patch_size) ** 2
        + (1 if ap.vision_feature_select_strategy == "full" else 0),
    )
    torch.manual_seed(ap.seed)
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(vision.state_dict())
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    processor = make_processor(visual, tokenizer, ap.vision_feature_select_strategy)
    return model, processor


def build_from_foundation(
    foundation_dir: Path, ap: AlignParams
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Build the demo base from ``models/foundation`` (``clip/`` open_clip model, ``tokenizer/`` HF)."""
    from vital.foundation import load_clip

    clip_dir, tok_dir = Path(foundation_dir) / "clip", Path(foundation_dir) / "tokenizer"
    for p in (clip_dir, tok_dir):
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: missing (run the foundation stage first)")
    clip, _, _ = load_clip(clip_dir)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    return build_tiny_llava(clip.visual, tokenizer, ap)


def align_stage(ap: AlignParams, paths: Paths) -> dict[str, Any]:
    """align.backend ``demo``: the tiny LLaVA built from ``models/foundation``, aligned on the whole demo
    corpus (before any sample)."""
    return align.run(
        foundation_dir=paths.foundation,
        figures=paths.figures,
        corpus_root=paths.corpus,
        out=paths.base_model,
        ap=ap,
        checkpoint_dir=paths.root / ".vital" / "checkpoints" / "align",
        metrics_path=paths.metric("align"),
        curve_path=paths.plots / "align_loss.csv",
        build_base=build_from_foundation,
    )
