"""End-to-end selector (``selector.finetune_backbone``): the CLIP backbone trains together with the head.

BioMed-VITAL fine-tunes BiomedCLIP with its rating head. Frozen features can miss what a preference turns
on (the demo CLIP's pooled text feature hardly encodes a truncated answer), so a rater that reads the
tokens itself can learn it. ``text`` trains the text tower and keeps the embed stage's image features;
``full`` trains both towers. The head sees the same ``head_features`` as the frozen path, built live from
the trainable towers; the embed stage's fixed extras (round similarities, side scores) are kept as inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vital.embed.images import FigureImages, image_batches
from vital.embed.inputs import read_inputs
from vital.embed.store import Embeddings
from vital.embed.text import candidate_text, context_text, round_texts
from vital.io import RecordError
from vital.params import SelectorParams
from vital.paths import Paths
from vital.selector.features import head_features, paper_features

BACKBONE_WEIGHTS = "backbone.safetensors"


@dataclass
class TokenTable:
    """Token rows, and for each candidate the rows that make up its text (one per round, or one joint)."""

    tokens: torch.Tensor  # (R, context_length)
    rows: list[torch.Tensor]  # per candidate: indices into ``tokens``


def _tensor(a) -> torch.Tensor | None:
    return None if a is None else torch.as_tensor(a, dtype=torch.float32)


class EndToEndRater(torch.nn.Module):
    """``forward(candidate indices) -> ratings`` through the backbone's towers and the rating head."""

    def __init__(
        self,
        clip: torch.nn.Module,
        head: torch.nn.Module,
        emb: Embeddings,
        text: TokenTable,
        context_tokens: torch.Tensor | None,
        figure_of: torch.Tensor,
        images: torch.Tensor | None,
    ):
        super().__init__()
        self.clip, self.head = clip, head
        self.paper = False  # selector.head: paper reads [txt, img] (build_rater sets it)
        self.rounds = emb.text_max is not None
        self.text = text
        self.context_tokens = context_tokens  # (F, L) rounds mode
        self.figure_of = figure_of  # (N,) candidate -> figure row
        self.images = images  # (F, 3, H, W) when the vision tower trains, else None
        self.frozen_image = _tensor(emb.image)
        self.round_sim = _tensor(emb.round_sim)
        self.text_side = _tensor(emb.text_side)
        self.image_side = _tensor(emb.image_side)

    def to_device(self, device: str) -> EndToEndRater:
        """Model and every lookup table on ``device`` (the tables are plain attributes, not buffers)."""
        self.to(device)
        for name in (
            "context_tokens",
            "figure_of",
            "images",
            "frozen_image",
            "round_sim",
            "text_side",
            "image_side",
        ):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(device))
        self.text = TokenTable(self.text.tokens.to(device), self.text.rows)
        return self

    def __len__(self) -> int:
        return len(self.figure_of)

    def _image(self, idx: torch.Tensor) -> torch.Tensor:
        if self.images is None:
            return self.frozen_image[idx]
        figs, inverse = torch.unique(self.figure_of[idx], return_inverse=True)
        return self.clip.encode_image(self.images[figs])[inverse]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        idx = idx.to(self.figure_of.device)
        image = self._image(idx)
        rows = [self.text.rows[i] for i in idx.tolist()]
        feats = self.clip.encode_text(self.text.tokens[torch.cat(rows).to(idx.device)])
        if not self.rounds:
            features = paper_features if self.paper else head_features
            return self.head(features(image, feats))
        counts = torch.tensor([len(r) for r in rows], device=idx.device)
        owner = torch.repeat_interleave(torch.arange(len(idx), device=idx.device), counts)
        unit = F.normalize(feats, dim=-1)
        mean = unit.new_zeros(len(idx), unit.shape[1]).index_add(0, owner, unit) / counts[:, None]
        mx = torch.full_like(mean, -torch.inf).scatter_reduce(
            0, owner[:, None].expand_as(unit), unit, reduce="amax"
        )
        figs, inverse = torch.unique(self.figure_of[idx], return_inverse=True)
        context = self.clip.encode_text(self.context_tokens[figs])[inverse]

        def extra(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[idx]

        x = head_features(
            image, mean, context, mx, extra(self.round_sim), extra(self.text_side), extra(self.image_side)
        )
        return self.head(x)

    def backbone_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.clip.parameters() if p.requires_grad]


def build_rater(emb: Embeddings, head: torch.nn.Module, sp: SelectorParams, paths: Paths) -> EndToEndRater:
    """Load the backbone the embed stage used and tokenize every candidate the way the embed stage did."""
    from vital.foundation import load_clip  # open_clip import is slow

    backbone, pretrained = emb.meta.get("backbone"), emb.meta.get("pretrained")
    if not backbone or backbone == "synthetic":
        raise RecordError(
            f"{paths.embeddings}: features carry no loadable backbone ({backbone!r}); "
            "selector.finetune_backbone needs the open_clip model the embed stage used"
        )
    clip, preprocess, tokenizer = load_clip(backbone, pretrained)
    inputs = read_inputs(paths.candidates, paths.sample)
    by_id = {c.id: c for c in inputs.candidates}
    missing = [c for c in emb.candidate_ids if c not in by_id]
    if missing:
        raise RecordError(
            f"{paths.candidates}: {len(missing)} embedded candidates are missing (e.g. {missing[:3]}); "
            "rerun the embed stage"
        )
    cands = [by_id[c] for c in emb.candidate_ids]
    fig_ids = list(dict.fromkeys(emb.pair_ids))
    fig_row = {p: i for i, p in enumerate(fig_ids)}
    figure_of = torch.tensor([fig_row[p] for p in emb.pair_ids], dtype=torch.long)

    rounds = emb.text_max is not None
    if rounds:
        texts = [round_texts(c) for c in cands]
    else:
        order, first = emb.meta.get("text_order", "paper"), emb.meta.get("text_rounds", "all")
        texts = [[candidate_text(inputs.figures[c.pair_id], c, order, first)] for c in cands]
    flat = [t for ts in texts for t in ts]
    tokens = torch.cat([tokenizer(flat[i : i + 1024]) for i in range(0, len(flat), 1024)])
    rows, start = [], 0
    for ts in texts:
        rows.append(torch.arange(start, start + len(ts)))
        start += len(ts)
    context = tokenizer([context_text(inputs.figures[p]) for p in fig_ids]) if rounds else None

    images = None
    if sp.finetune_backbone == "full":
        ds = FigureImages(fig_ids, [inputs.figures[p].image for p in fig_ids], paths.corpus, preprocess)
        images = torch.zeros(0)
        for idx, batch, bad in image_batches(ds, 256, 0):
            if bad:
                named = [f"{fig_ids[i]}: {ds.images[i]} ({err})" for i, err in bad[:3]]
                raise RecordError(
                    f"{paths.corpus}: {len(bad)} figure image(s) the embed stage read are unreadable now: "
                    f"{named}; rerun the embed stage"
                )
            if images.numel() == 0:
                images = torch.zeros((len(fig_ids), *batch.shape[1:]))
            images[idx] = batch
    else:
        for p in clip.visual.parameters():
            p.requires_grad_(False)
    clip.train()
    rater = EndToEndRater(clip, head, emb, TokenTable(tokens, rows), context, figure_of, images)
    rater.paper = sp.head == "paper"
    return rater.to_device(sp.device)


def save_backbone(out: Path, rater: EndToEndRater) -> dict[str, Any]:
    """The fine-tuned backbone's weights beside the head; its architecture is the embed stage's backbone."""
    state = {k: v.detach().contiguous().cpu() for k, v in rater.clip.state_dict().items()}
    save_file(state, str(out / BACKBONE_WEIGHTS))
    return {"backbone_weights": BACKBONE_WEIGHTS}
