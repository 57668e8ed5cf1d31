"""Pairwise training of a rater, with early stopping on weighted validation agreement (or a fixed schedule)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vital.embed.store import Embeddings
from vital.io import RecordError
from vital.params import SelectorParams
from vital.paths import Paths
from vital.progress import progress
from vital.selector.backbone import build_rater
from vital.selector.data import PairSet
from vital.selector.model import FrozenFeatureRater, RatingHead


def pair_loss(diff: torch.Tensor, kind: str, margin: float) -> torch.Tensor:
    """Per-pair loss of rating differences r(winner) - r(loser)."""
    if kind == "hinge":
        return F.relu(margin - diff)
    return F.softplus(-diff)  # -log sigmoid(diff): Bradley–Terry


@dataclass
class TrainResult:
    rater: torch.nn.Module
    curve: list[dict[str, float]]
    best_epoch: int
    stopped_early: bool

    @property
    def head(self) -> RatingHead:
        return self.rater.head


@torch.no_grad()
def rate_all(rater: torch.nn.Module, chunk: int = 512) -> torch.Tensor:
    """Ratings of every candidate, in eval mode, on the CPU."""
    was = rater.training
    rater.eval()
    out = torch.cat(
        [rater(torch.arange(i, min(i + chunk, len(rater)))).cpu() for i in range(0, len(rater), chunk)]
    )
    rater.train(was)
    return out


def weighted_agreement(scores: torch.Tensor, ps: PairSet) -> float:
    if len(ps) == 0 or float(ps.weight.sum()) == 0:
        return float("nan")
    d = scores[ps.winner] - scores[ps.loser]
    correct = (d > 0).float() + 0.5 * (d == 0).float()
    return float((correct * ps.weight).sum() / ps.weight.sum())


def new_rater(x: torch.Tensor, sp: SelectorParams, emb: Embeddings, paths: Paths) -> torch.nn.Module:
    """A fresh head on ``x``'s width, on the frozen features ``x`` or with the backbone end to end."""
    torch.manual_seed(sp.seed)
    head = RatingHead(x.shape[1], sp.hidden, sp.dropout, sp.head)
    if sp.finetune_backbone == "none":
        return FrozenFeatureRater(head, x).to_device(sp.device)
    return build_rater(emb, head, sp, paths)  # loads open_clip: only when the backbone trains


def train_rater(
    rater: torch.nn.Module, train: PairSet, val: PairSet, sp: SelectorParams, desc: str = "selector"
) -> TrainResult:
    """Pairwise training of ``rater`` (head, and backbone when it has trainable parameters) with early
    stopping on weighted validation agreement."""
    torch.manual_seed(sp.seed)
    gen = torch.Generator().manual_seed(sp.seed)
    backbone = rater.backbone_parameters()
    groups = [{"params": list(rater.head.parameters()), "lr": sp.lr}]
    if backbone:
        groups.append({"params": backbone, "lr": sp.backbone_lr})
    opt = torch.optim.AdamW(groups, weight_decay=sp.weight_decay)
    # Weighted mean over the whole training set, not per batch: each batch's sum of w*loss is divided by
    # (mean weight x batch size). The gradient scale is then independent of human_weight (400 human-pair
    # weight does not mean a 400x larger step), and batches that happen to hold more human pairs still
    # count more, so the expected batch gradient is the gradient of the full weighted objective.
    active = train.weight > 0
    train = train.subset(active.numpy())
    if len(train) == 0:
        raise RecordError("no training pair with positive weight (human_weight=0 and no model pairs?)")
    norm = float(train.weight.mean())
    best, best_state, best_epoch, bad, curve = -math.inf, None, 0, 0, []
    rater.train()
    for epoch in progress(range(1, sp.epochs + 1), desc=desc):
        perm = torch.randperm(len(train), generator=gen)
        total = 0.0
        for i in range(0, len(perm), sp.batch_size):
            b = perm[i : i + sp.batch_size]
            # one forward per distinct candidate: a backbone pass is the expensive part
            both = torch.cat([train.winner[b], train.loser[b]])
            uniq, inverse = torch.unique(both, return_inverse=True)
            r = rater(uniq).cpu()[inverse]
            d = r[: len(b)] - r[len(b) :]
            loss = (pair_loss(d, sp.loss, sp.margin) * train.weight[b]).sum() / (norm * len(b))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        scores = rate_all(rater)
        val_agree = weighted_agreement(scores, val) if len(val) else weighted_agreement(scores, train)
        curve.append(
            {"epoch": epoch, "train_loss": round(total / len(train), 5), "val_agreement": round(val_agree, 5)}
        )
        if not sp.early_stopping:
            best_epoch = epoch  # the reference keeps the last epoch's model
        elif val_agree > best + 1e-6:
            best, best_epoch, bad = val_agree, epoch, 0
            best_state = {k: v.detach().clone() for k, v in rater.state_dict().items()}
        else:
            bad += 1
            if bad >= sp.patience:
                break
    if best_state is not None:
        rater.load_state_dict(best_state)
    rater.eval()
    return TrainResult(rater, curve, best_epoch, stopped_early=len(curve) < sp.epochs)
