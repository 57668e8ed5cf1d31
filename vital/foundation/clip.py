"""The tiny open_clip model of the demo and one loader for every CLIP backbone vital uses.

``vital-tiny-clip`` is a standard open_clip ``CLIP``: a ``VisionTransformer`` (GELU, class-token pooling,
no attentional pool) and a small causal text transformer with open_clip's bundled BPE tokenizer. It is
registered through ``open_clip.add_model_config`` so the usual factory builds it offline, and it is saved
in the layout open_clip's ``local-dir:`` schema loads (``open_clip_config.json`` + safetensors weights),
the same layout as an ``hf-hub:`` repository such as BiomedCLIP's.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vital.params import FoundationParams

if TYPE_CHECKING:
    import torch

# open_clip (seconds to import: torchvision, timm) is imported by the functions that use it, so the
# foundation stage's `pretrained` record and readers of the constants here do not pay for it

TINY_CLIP = "vital-tiny-clip"
CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"

_registry_dir: Path | None = None


def tiny_clip_config(fp: FoundationParams) -> dict[str, Any]:
    """open_clip model config for the demo CLIP, sized by ``foundation`` params."""
    if fp.width % 16:
        raise ValueError(f"foundation.width={fp.width} must be a multiple of 16 (attention head width)")
    if fp.image_size % fp.patch_size:
        raise ValueError(
            f"foundation.image_size={fp.image_size} must be a multiple of foundation.patch_size={fp.patch_size}"
        )
    return {
        "embed_dim": fp.embed_dim,
        "vision_cfg": {
            "image_size": fp.image_size,
            "layers": fp.layers,
            "width": fp.width,
            "head_width": 16,
            "patch_size": fp.patch_size,
        },
        "text_cfg": {
            "context_length": fp.context_length,
            "vocab_size": 49408,  # open_clip's bundled SimpleTokenizer
            "width": fp.width,
            "heads": max(1, fp.width // 16),
            "layers": fp.layers,
        },
    }


def register_tiny_clip(fp: FoundationParams | None = None) -> str:
    """Register ``vital-tiny-clip`` with open_clip (re-registering replaces the previous sizes)."""
    import open_clip

    global _registry_dir
    if _registry_dir is None:
        _registry_dir = Path(tempfile.mkdtemp(prefix="vital-open-clip-configs-"))
    cfg_file = _registry_dir / f"{TINY_CLIP}.json"
    cfg_file.write_text(json.dumps(tiny_clip_config(fp or FoundationParams())), encoding="utf-8")
    open_clip.add_model_config(cfg_file)
    return TINY_CLIP


def build_tiny_clip(fp: FoundationParams) -> tuple[torch.nn.Module, Callable, Callable]:
    """A randomly initialised tiny CLIP with its eval preprocess and tokenizer."""
    import open_clip
    import torch

    name = register_tiny_clip(fp)
    torch.manual_seed(fp.seed)
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    tokenizer = open_clip.get_tokenizer(name)
    return model, preprocess, tokenizer


def save_clip(model: torch.nn.Module, model_cfg: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``out_dir`` in open_clip's local-dir / hf-hub layout; returns the directory."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_NAME))
    visual = model.visual
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": list(visual.image_mean), "std": list(visual.image_std)},
    }
    (out_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out_dir


def resolve_backbone(path_or_name: str | Path, pretrained: str | None = None) -> tuple[str, str | None]:
    """Map what a user writes in params to an open_clip model id and checkpoint.

    Accepts a directory holding ``open_clip_config.json`` (e.g. ``models/foundation/clip``), an explicit
    ``local-dir:``/``hf-hub:`` id, or an open_clip model name (``vital-tiny-clip`` included) with an
    optional local checkpoint file in ``pretrained``.
    """
    name = str(path_or_name)
    if name.startswith(("hf-hub:", "local-dir:")):
        if pretrained:
            raise ValueError(f"backbone {name!r} carries its own weights; drop pretrained={pretrained!r}")
        return name, None
    path = Path(name)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{path}: not an open_clip model directory (no {CONFIG_NAME})")
        return f"local-dir:{path}", None
    import open_clip

    if name == TINY_CLIP:
        register_tiny_clip()
    if name not in open_clip.list_models():
        raise ValueError(
            f"backbone {name!r} is neither a directory with {CONFIG_NAME}, an 'hf-hub:'/'local-dir:' id, "
            f"nor an open_clip model name"
        )
    if pretrained is not None and not Path(pretrained).is_file():
        raise FileNotFoundError(f"checkpoint for backbone {name!r} not found: {pretrained}")
    return name, pretrained


def load_clip(
    path_or_name: str | Path, pretrained: str | None = None, device: str = "cpu"
) -> tuple[torch.nn.Module, Callable, Callable]:
    """Load any open_clip backbone in eval mode: ``(model, preprocess, tokenizer)``.

    ``path_or_name``: the foundation dir (``models/foundation/clip``), ``hf-hub:<id>`` (BiomedCLIP for
    users with network) or ``local-dir:<dir>``, or an open_clip model name with ``pretrained`` a local
    checkpoint file (without one the weights are random: only useful in tests).
    """
    import open_clip

    model_id, checkpoint = resolve_backbone(path_or_name, pretrained)
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_id, pretrained=checkpoint, device=device
    )
    tokenizer = open_clip.get_tokenizer(model_id)
    model.eval()
    return model, preprocess, tokenizer


def context_length(tokenizer: Callable, default: int = 77) -> int:
    """The text context length a loaded open_clip tokenizer truncates to."""
    return int(getattr(tokenizer, "context_length", default) or default)
