"""The rating head's input features, and their names, built from CLIP features only.

One table of terms serves both: ``head_features`` concatenates the terms ``feature_terms`` lists, and
``feature_names`` (recorded in the selector's config) joins the same list, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vital.embed.store import Embeddings
from vital.params import ParamsError


@dataclass
class _Inputs:
    image: torch.Tensor
    text: torch.Tensor
    context: torch.Tensor | None
    text_max: torch.Tensor | None
    round_sim: torch.Tensor | None
    text_side: torch.Tensor | None
    image_side: torch.Tensor | None


# name -> the columns it contributes, in the order ``feature_terms`` lists them
_TERMS: dict[str, Callable[[_Inputs], torch.Tensor]] = {
    "img": lambda v: v.image,
    "txt": lambda v: v.text,
    "img*txt": lambda v: v.image * v.text,
    "|img-txt|": lambda v: (v.image - v.text).abs(),
    "ctx": lambda v: v.context,
    "ctx*txt": lambda v: v.context * v.text,
    "|ctx-txt|": lambda v: (v.context - v.text).abs(),
    "max": lambda v: v.text_max,
    "img*max": lambda v: v.image * v.text_max,
    "ctx*max": lambda v: v.context * v.text_max,
    "min/mean cos(round, img)": lambda v: v.round_sim[..., :2],
    "min/mean cos(round, ctx)": lambda v: v.round_sim[..., 2:],
    # the answer's side vector signed by the image's side: one linear direction then reads "the answer
    # names the side the image shows"
    "txt_side": lambda v: v.text_side,
    "img_side*txt_side": lambda v: v.image_side * v.text_side,
    "img_side": lambda v: v.image_side,
}


def feature_terms(context: bool, text_max: bool, round_sim: bool, side: bool) -> list[str]:
    """The head's input terms, in order, for the inputs present (side needs both side inputs)."""
    names = ["img", "txt", "img*txt", "|img-txt|"]
    if context:
        names += ["ctx", "ctx*txt", "|ctx-txt|"]
    if text_max:
        names += ["max", "img*max"] + (["ctx*max"] if context else [])
    if round_sim:
        names += ["min/mean cos(round, img)", "min/mean cos(round, ctx)"]
    if side:
        names += ["txt_side", "img_side*txt_side", "img_side"]
    return names


def head_features(
    image: torch.Tensor,
    text: torch.Tensor,
    context: torch.Tensor | None = None,
    text_max: torch.Tensor | None = None,
    round_sim: torch.Tensor | None = None,
    text_side: torch.Tensor | None = None,
    image_side: torch.Tensor | None = None,
) -> torch.Tensor:
    """The head's input, built from CLIP features only.

    ``[img, txt, img*txt, |img-txt|]`` of the L2-normalised features: the products let a small head see
    image–text agreement (e.g. "left" in the answer, lesion on the right in the figure) as CLIP's own
    similarity does. With the embed stage's ``rounds`` features, ``text`` is the (unnormalised) mean of the
    normalised rounds and ``text_max`` / ``context`` (caption + mention) add ``[ctx, ctx*txt, |ctx-txt|,
    max, img*max, ctx*max]``: agreement with what the caption states, and the one odd round.
    """
    image = F.normalize(image, dim=-1)
    text = text if text_max is not None else F.normalize(text, dim=-1)
    if image.shape[-1] != text.shape[-1]:
        return torch.cat([image, text], dim=-1)
    if context is not None:
        context = F.normalize(context, dim=-1)
    v = _Inputs(image, text, context, text_max, round_sim, text_side, image_side)
    side = text_side is not None and image_side is not None
    names = feature_terms(context is not None, text_max is not None, round_sim is not None, side)
    return torch.cat([_TERMS[n](v) for n in names], dim=-1)


def paper_features(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``selector.head: paper``: the L2-normalised text and image features side by side, as BioMed-VITAL's
    head reads them (open_clip's forward normalises both)."""
    return torch.cat([F.normalize(text, dim=-1), F.normalize(image, dim=-1)], dim=-1)


def check_paper_inputs(emb: Embeddings) -> None:
    """The paper head reads one joint text per candidate; rounds-mode features are vital's own."""
    if emb.text_max is not None:
        raise ParamsError(
            "selector.head=paper reads one text per candidate: set embed.text_mode=joint "
            "(and embed.text_rounds=first for the reference's caption + mention + first Q&A)"
        )


def embedding_features(emb: Embeddings, head: str = "vital") -> torch.Tensor:
    """The head's input for every candidate in ``emb``: ``head_features`` (whichever text mode the embed
    stage used), or ``paper_features`` for ``selector.head: paper``."""

    def t(a: np.ndarray | None) -> torch.Tensor | None:
        return None if a is None else torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    if head == "paper":
        check_paper_inputs(emb)
        return paper_features(t(emb.image), t(emb.text))
    return head_features(
        t(emb.image),
        t(emb.text),
        t(emb.context),
        t(emb.text_max),
        t(emb.round_sim),
        t(emb.text_side),
        t(emb.image_side),
    )


def feature_names(emb: Embeddings, head: str = "vital") -> str:
    """What ``embedding_features(emb, head)`` concatenates, as the selector's config records it."""
    if head == "paper":
        return "concat(txt, img) of l2-normalised CLIP features (BioMed-VITAL's head input)"
    side = emb.text_side is not None and emb.image_side is not None
    names = feature_terms(emb.context is not None, emb.text_max is not None, emb.round_sim is not None, side)
    return f"concat({', '.join(names)}) of l2-normalised CLIP features (text mode: {emb.meta.get('text_mode', 'joint')})"
