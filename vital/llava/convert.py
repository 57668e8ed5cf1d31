"""open_clip ``VisionTransformer`` -> Hugging Face ``CLIPVisionModel`` (same outputs, checked in tests).

The LLaVA vision tower in transformers is a ``CLIPVisionModel``; the demo's foundation encoder (and
BiomedCLIP) is an open_clip ViT. The two compute the same function with different parameter layouts:
open_clip fuses q/k/v into ``nn.MultiheadAttention.in_proj_*`` and may carry LayerScale, which is folded
into the output projections here. Variants without a ``CLIPVisionModel`` equivalent are refused.
"""

from __future__ import annotations

import torch
from open_clip.transformer import LayerScale, QuickGELU, ResidualAttentionBlock, VisionTransformer
from torch import nn
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ConversionError(ValueError):
    """The open_clip vision tower uses a feature ``CLIPVisionModel`` cannot represent."""


def _square(value, what: str) -> int:
    a, b = (value, value) if isinstance(value, int) else tuple(value)
    if a != b:
        raise ConversionError(f"non-square {what} {value!r}: CLIPVisionModel needs a square {what}")
    return int(a)


def _activation(block: ResidualAttentionBlock) -> str:
    act = block.mlp.gelu
    if isinstance(act, QuickGELU):
        return "quick_gelu"
    if isinstance(act, nn.GELU):
        return "gelu" if act.approximate == "none" else "gelu_new"
    raise ConversionError(f"unsupported MLP activation {type(act).__name__}")


def _check_supported(visual: nn.Module) -> None:
    if not isinstance(visual, VisionTransformer):
        raise ConversionError(
            f"expected an open_clip VisionTransformer, got {type(visual).__name__} (timm tower?)"
        )
    if visual.attn_pool is not None:
        raise ConversionError("attentional pooling (CoCa-style) has no CLIPVisionModel equivalent")
    if visual.pool_type != "tok":
        raise ConversionError(
            f"pool_type={visual.pool_type!r}: CLIPVisionModel pools the class token ('tok')"
        )
    if isinstance(visual.ln_pre, nn.Identity):
        raise ConversionError("no_ln_pre=True: CLIPVisionModel always applies a pre-LayerNorm")
    for i, block in enumerate(visual.transformer.resblocks):
        if type(block) is not ResidualAttentionBlock:
            raise ConversionError(
                f"resblock {i} is {type(block).__name__}; only standard blocks are convertible"
            )
        if hasattr(block, "ln_1_kv"):
            raise ConversionError(f"resblock {i} is a cross-attention block")


def vision_config(visual: VisionTransformer) -> CLIPVisionConfig:
    """The ``CLIPVisionConfig`` matching an open_clip ``VisionTransformer``."""
    _check_supported(visual)
    block = visual.transformer.resblocks[0]
    width = visual.conv1.out_channels
    proj = visual.proj
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=block.mlp.c_fc.out_features,
        num_hidden_layers=len(visual.transformer.resblocks),
        num_attention_heads=block.attn.num_heads,
        image_size=_square(visual.image_size, "image_size"),
        patch_size=_square(visual.patch_size, "patch_size"),
        num_channels=visual.conv1.in_channels,
        hidden_act=_activation(block),
        layer_norm_eps=block.ln_1.eps,
        projection_dim=proj.shape[1] if proj is not None else width,
    )


def _scale(module: nn.Module) -> torch.Tensor | None:
    return module.gamma.detach() if isinstance(module, LayerScale) else None


def _block_state(block: ResidualAttentionBlock, prefix: str) -> dict[str, torch.Tensor]:
    attn = block.attn
    q_w, k_w, v_w = attn.in_proj_weight.detach().chunk(3, dim=0)
    q_b, k_b, v_b = attn.in_proj_bias.detach().chunk(3, dim=0)
    out_w, out_b = attn.out_proj.weight.detach(), attn.out_proj.bias.detach()
    fc2_w, fc2_b = block.mlp.c_proj.weight.detach(), block.mlp.c_proj.bias.detach()
    # LayerScale multiplies a linear layer's output per channel: fold it into that layer's rows.
    if (g := _scale(block.ls_1)) is not None:
        out_w, out_b = out_w * g[:, None], out_b * g
    if (g := _scale(block.ls_2)) is not None:
        fc2_w, fc2_b = fc2_w * g[:, None], fc2_b * g
    s = {
        "layer_norm1.weight": block.ln_1.weight,
        "layer_norm1.bias": block.ln_1.bias,
        "self_attn.q_proj.weight": q_w,
        "self_attn.q_proj.bias": q_b,
        "self_attn.k_proj.weight": k_w,
        "self_attn.k_proj.bias": k_b,
        "self_attn.v_proj.weight": v_w,
        "self_attn.v_proj.bias": v_b,
        "self_attn.out_proj.weight": out_w,
        "self_attn.out_proj.bias": out_b,
        "layer_norm2.weight": block.ln_2.weight,
        "layer_norm2.bias": block.ln_2.bias,
        "mlp.fc1.weight": block.mlp.c_fc.weight,
        "mlp.fc1.bias": block.mlp.c_fc.bias,
        "mlp.fc2.weight": fc2_w,
        "mlp.fc2.bias": fc2_b,
    }
    return {f"{prefix}{k}": v.detach().clone() for k, v in s.items()}


def vision_state_dict(visual: VisionTransformer) -> dict[str, torch.Tensor]:
    """``visual``'s weights under ``CLIPVisionTransformer`` names (``embeddings.*``, ``encoder.layers.*``)."""
    _check_supported(visual)
    if visual.conv1.bias is not None:
        raise ConversionError("patch embedding with bias: CLIPVisionModel's patch_embedding has none")
    p = ""
    state = {
        f"{p}embeddings.class_embedding": visual.class_embedding.detach().clone(),
        f"{p}embeddings.patch_embedding.weight": visual.conv1.weight.detach().clone(),
        f"{p}embeddings.position_embedding.weight": visual.positional_embedding.detach().clone(),
        f"{p}pre_layrnorm.weight": visual.ln_pre.weight.detach().clone(),
        f"{p}pre_layrnorm.bias": visual.ln_pre.bias.detach().clone(),
        f"{p}post_layernorm.weight": visual.ln_post.weight.detach().clone(),
        f"{p}post_layernorm.bias": visual.ln_post.bias.detach().clone(),
    }
    for i, block in enumerate(visual.transformer.resblocks):
        state.update(_block_state(block, f"{p}encoder.layers.{i}."))
    return state


def convert_vision_tower(visual: VisionTransformer) -> CLIPVisionModel:
    """A ``CLIPVisionModel`` computing what ``visual`` computes (eval mode, float32)."""
    config = vision_config(visual)
    model = CLIPVisionModel(config)
    state = vision_state_dict(visual)
    # transformers has moved the inner module's prefix between versions; match what this one uses.
    if any(k.startswith("vision_model.") for k in model.state_dict()):
        state = {f"vision_model.{k}": v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # position_ids is a non-persistent buffer; anything else missing means a mapping bug.
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ConversionError(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    return model.eval()


def projection(visual: VisionTransformer) -> torch.Tensor | None:
    """open_clip's image projection ``proj`` (width x embed_dim) as a ``visual_projection`` weight."""
    return None if visual.proj is None else visual.proj.detach().T.clone()


def image_processor(visual: VisionTransformer) -> CLIPImageProcessor:
    """A ``CLIPImageProcessor`` reproducing open_clip's eval preprocess (resize, centre crop, normalise)."""
    size = _square(visual.image_size, "image_size")
    cfg = getattr(visual, "preprocess_cfg", None) or {}
    mean = tuple(cfg.get("mean") or getattr(visual, "image_mean", None) or OPENAI_MEAN)
    std = tuple(cfg.get("std") or getattr(visual, "image_std", None) or OPENAI_STD)
    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": size},
        resample=3,  # bicubic, as open_clip
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(mean),
        image_std=list(std),
        do_convert_rgb=True,
    )
