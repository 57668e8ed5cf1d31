"""Demo foundation: contrastive pretraining of the tiny CLIP on the corpus figure–caption pairs.

Mirrors the real recipe (a CLIP image encoder pretrained on figure–caption pairs, e.g. BiomedCLIP on
PMC-15M) at toy scale, so that the tiny LLaVA's vision tower actually sees the figure (a randomly
initialised tower never learns laterality; a pretrained, frozen one does).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from PIL import UnidentifiedImageError
from pydantic import ValidationError

from vital.drops import Drops
from vital.foundation.clip import build_tiny_clip, save_clip, tiny_clip_config
from vital.io import RecordError, read_jsonl, write_curve
from vital.mirror import mirror_text
from vital.params import FoundationParams
from vital.paths import Paths
from vital.progress import progress
from vital.schema import FigureRecord
from vital.shards import open_image


@dataclass
class Corpus:
    """Decoded corpus: one image tensor and one caption text per usable figure."""

    pair_ids: list[str]
    images: torch.Tensor  # (N, 3, H, W), already preprocessed
    texts: list[str]
    drops: Drops


def clip_text(rec: FigureRecord) -> str:
    """CLIP training text: the caption plus the first in-text mention (PMC-15M style)."""
    mention = rec.in_text_mention[0] if rec.in_text_mention else ""
    return f"{rec.fig_caption} {mention}".strip()


def load_corpus(figures: Path, corpus_root: Path, preprocess: Callable) -> Corpus:
    """Read figure records and decode their images; bad records are skipped, counted and listed."""
    if not figures.is_file():
        raise FileNotFoundError(f"{figures}: corpus index not found (build the demo world: `vital world`)")
    pair_ids, images, texts, drops = [], [], [], Drops()
    for i, raw in enumerate(progress(read_jsonl(figures), desc="decode corpus")):
        try:
            rec = FigureRecord.model_validate(raw)
        except ValidationError as e:
            drops.add("invalid_figure_record", f"{figures}:{i + 1}", f"{e.error_count()} errors")
            continue
        try:
            with open_image(rec.image, corpus_root) as im:
                images.append(preprocess(im.convert("RGB")))
        except (OSError, UnidentifiedImageError) as e:
            drops.add("unreadable_image", rec.pair_id, f"{rec.image}: {type(e).__name__}")
            continue
        pair_ids.append(rec.pair_id)
        texts.append(clip_text(rec))
    if len(pair_ids) < 2:
        raise RecordError(
            f"{figures}: fewer than 2 usable figures ({drops.total} skipped: {drops.summary()})"
        )
    return Corpus(pair_ids, torch.stack(images), texts, drops)


def split_heldout(n: int, heldout: int, seed: int) -> tuple[list[int], list[int]]:
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    heldout = min(heldout, n // 4)
    return idx[heldout:], idx[:heldout]


@torch.no_grad()
def retrieval_top1(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> float:
    """Image->text top-1 accuracy within one batch (chance = 1/len(batch))."""
    model.eval()
    img = model.encode_image(images, normalize=True)
    txt = model.encode_text(tokens, normalize=True)
    pred = (img @ txt.T).argmax(dim=1)
    return (pred == torch.arange(len(images))).float().mean().item()


def pretrain(
    model: torch.nn.Module,
    corpus: Corpus,
    tokens: torch.Tensor,
    train_idx: list[int],
    fp: FoundationParams,
    mirrored: torch.Tensor | None = None,
) -> list[tuple[int, float]]:
    """Contrastive (InfoNCE) training with open_clip's ``ClipLoss``; returns the (step, loss) curve.

    ``mirrored``: tokens of the mirrored captions (``mirror_text``); with them, half of every batch is
    flipped horizontally together with its caption.
    """
    torch.manual_seed(fp.seed)
    gen = torch.Generator().manual_seed(fp.seed)
    loss_fn = ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=fp.lr, weight_decay=0.05, fused=True)
    warmup = max(1, fp.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, fp.steps) / fp.steps)),
    )
    train = torch.tensor(train_idx)
    batch = min(fp.batch_size, len(train))
    curve = []
    model.train()
    for step in progress(range(fp.steps), desc="pretrain clip"):
        sel = train[torch.randperm(len(train), generator=gen)[:batch]]
        images, text = corpus.images[sel], tokens[sel]
        if mirrored is not None:
            # mirror half the batch, image and caption together: a caption's "left" must match the pixels,
            # which a contrastive loss on a few hundred figures otherwise barely enforces
            flip = torch.rand(len(sel), generator=gen) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            text = torch.where(flip[:, None], mirrored[sel], text)
        img = model.encode_image(images, normalize=True)
        txt = model.encode_text(text, normalize=True)
        loss = loss_fn(img, txt, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():  # CLIP's clamp on the learned temperature
            model.logit_scale.clamp_(0, math.log(100))
        curve.append((step, loss.item()))
    model.eval()
    return curve


def _side(truth: dict[str, Any]) -> str | None:
    """The lesion side recorded in a truth record (top level or inside its findings), if any."""
    for key in ("side", "laterality"):
        if isinstance(truth.get(key), str):
            return truth[key]
    findings = truth.get("findings")
    if isinstance(findings, dict):
        return _side(findings)
    if isinstance(findings, list):
        for f in findings:
            if isinstance(f, dict) and (s := _side(f)):
                return s
    return None


def side_labels(truth_file: Path) -> dict[str, str]:
    """pair_id -> lesion side ('left'/'right') from the demo world's hidden truth."""
    labels = {}
    for raw in read_jsonl(truth_file):
        side = _side(raw)
        if raw.get("pair_id") and side in ("left", "right"):
            labels[raw["pair_id"]] = side
    return labels


@torch.no_grad()
def image_features(model: torch.nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat(
        [model.encode_image(images[i : i + batch], normalize=True) for i in range(0, len(images), batch)]
    )


def linear_probe(features: torch.Tensor, labels: torch.Tensor, seed: int = 0, steps: int = 300) -> float:
    """Held-out accuracy (30%) of a logistic-regression probe; standardised features, full-batch Adam."""
    n = len(labels)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = int(n * 0.7)
    tr, te = perm[:cut], perm[cut:]
    mu, sd = features[tr].mean(0), features[tr].std(0) + 1e-6
    x = (features - mu) / sd
    torch.manual_seed(seed)
    probe = torch.nn.Linear(x.shape[1], 1)
    opt = torch.optim.Adam(probe.parameters(), lr=0.05, weight_decay=1e-3)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.binary_cross_entropy_with_logits(probe(x[tr]).squeeze(1), labels[tr])
            opt.zero_grad()
            loss.backward()
            opt.step()
    pred = (probe(x[te]).squeeze(1) > 0).float()
    return (pred == labels[te]).float().mean().item()


def laterality_probe(
    trained: torch.nn.Module, random_init: torch.nn.Module, corpus: Corpus, truth_file: Path, seed: int
) -> dict[str, Any]:
    """Does the tower see which side the lesion is on? Probe accuracy, pretrained vs random init."""
    if not truth_file.is_file():
        return {"skipped": f"{truth_file} not found"}
    sides = side_labels(truth_file)
    rows = [i for i, pid in enumerate(corpus.pair_ids) if pid in sides]
    if len(rows) < 20:
        return {"skipped": f"only {len(rows)} figures with a lesion side in {truth_file}"}
    y = torch.tensor([1.0 if sides[corpus.pair_ids[i]] == "left" else 0.0 for i in rows])
    imgs = corpus.images[rows]
    return {
        "figures": len(rows),
        "majority_baseline": round(max(y.mean().item(), 1 - y.mean().item()), 4),
        "pretrained_accuracy": round(linear_probe(image_features(trained, imgs), y, seed), 4),
        "random_init_accuracy": round(linear_probe(image_features(random_init, imgs), y, seed), 4),
    }


def train_demo(
    fp: FoundationParams,
    figures: Path,
    corpus_root: Path,
    out_dir: Path,
    truth_file: Path | None = None,
    curve_csv: Path | None = None,
    heldout: int = 64,
    tokenizer_dir: Path | None = None,
) -> dict[str, Any]:
    """Pretrain, save to ``out_dir`` (open_clip local-dir layout) and return the metrics.

    With ``tokenizer_dir``, also trains the demo LLM's byte-level BPE (``foundation.vocab_size``) on the
    same corpus text (vital.demo.tokenizer owns that tokenizer; this stage only produces it).
    """
    model, preprocess, tokenizer = build_tiny_clip(fp)
    random_init, _, _ = build_tiny_clip(fp)
    corpus = load_corpus(figures, corpus_root, preprocess)
    tokens = tokenizer(corpus.texts)
    train_idx, held_idx = split_heldout(len(corpus.texts), heldout, fp.seed)
    held = torch.tensor(held_idx)
    before = retrieval_top1(model, corpus.images[held], tokens[held])
    t0 = time.perf_counter()
    mirrored = tokenizer([mirror_text(t) for t in corpus.texts]) if fp.mirror_augment else None
    curve = pretrain(model, corpus, tokens, train_idx, fp, mirrored)
    train_s = time.perf_counter() - t0
    after = retrieval_top1(model, corpus.images[held], tokens[held])
    save_clip(model, tiny_clip_config(fp), out_dir)
    if curve_csv is not None:
        write_curve(curve_csv, curve)
    tail = [v for _, v in curve[-20:]]
    metrics: dict[str, Any] = {
        "backend": "demo",
        "model": "vital-tiny-clip",
        "figures": len(corpus.pair_ids),
        **corpus.drops.metrics(),
        "steps": fp.steps,
        "batch_size": fp.batch_size,
        "mirror_augment": fp.mirror_augment,
        "initial_loss": round(curve[0][1], 4),
        "final_loss": round(sum(tail) / len(tail), 4),
        "heldout_batch": len(held_idx),
        "retrieval_top1_i2t": round(after, 4),
        "retrieval_top1_i2t_untrained": round(before, 4),
        "retrieval_chance": round(1 / max(1, len(held_idx)), 4),
        "train_wall_s": round(train_s, 1),
    }
    if tokenizer_dir is not None:
        from vital.demo.tokenizer import train_tokenizer

        tok = train_tokenizer(corpus.texts, fp.vocab_size, tokenizer_dir)
        metrics["llm_tokenizer"] = {"vocab_size": len(tok), "texts": len(corpus.texts)}
    if truth_file is not None:
        metrics["laterality_probe"] = laterality_probe(model, random_init, corpus, truth_file, fp.seed)
    return metrics


def train_stage(fp: FoundationParams, paths: Paths) -> dict[str, Any]:
    """The foundation stage's ``demo`` backend: the tiny CLIP and the LLM tokenizer, trained on the corpus."""
    return train_demo(
        fp,
        paths.figures,
        paths.corpus,
        paths.foundation / "clip",
        truth_file=paths.truth,
        curve_csv=paths.plots / "foundation_loss.csv",
        tokenizer_dir=paths.foundation / "tokenizer",
    )
