"""Embed once: image and text features of every candidate, keyed by candidate id.

Image features are computed once per figure and shared by its candidates; text features once per
candidate. A sweep over the selector head never touches this stage (its DVC deps are the backbone, the
candidates and the sample), and ``run`` itself skips the work when its fingerprint is unchanged.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import math
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import UnidentifiedImageError
from pydantic import ValidationError
from torch.utils.data import DataLoader, Dataset

from vital.io import RecordError, read_json, read_jsonl, write_json
from vital.params import EmbedParams
from vital.paths import Paths
from vital.progress import progress
from vital.schema import Candidate, FigureRecord
from vital.shards import open_image

FEATURES = "features.npz"
META = "meta.json"
MAX_LISTED = 50
_SIDE = re.compile(r"\b(left|right)\b", re.IGNORECASE)  # as the foundation's mirror augmentation


# ---------------------------------------------------------------- text
def candidate_text(fig: FigureRecord, cand: Candidate, order: str = "paper") -> str:
    """The text the selector rates: caption + in-text mention + each question and answer.

    ``paper`` order is BioMed-VITAL's: ``caption + mention + "Question:" q + "Answer:" a``, tokenized with
    the backbone's tokenizer, which keeps the head and cuts the tail at the context length (256 tokens
    for BiomedCLIP). With a short context (the demo CLIP has 64) that can cut every answer, so that all
    candidates of a figure look the same; ``qa_first`` puts the conversation first, so the tail cut
    falls on the caption, which the candidates of one figure share anyway.
    """
    mention = " ".join(fig.in_text_mention)
    qa = []
    turns = cand.conversations
    for i in range(0, len(turns) - 1, 2):
        q = turns[i].value.replace("<image>", "").strip()
        qa.append(f"Question: {q} Answer: {turns[i + 1].value.strip()}")
    context = f"{fig.fig_caption} {mention}".strip()
    parts = [*qa, context] if order == "qa_first" else [context, *qa]
    return " ".join(parts)


def round_texts(cand: Candidate) -> list[str]:
    """One text per Q&A round (``rounds`` mode): short enough that no answer is cut at a small context."""
    turns = cand.conversations
    return [
        f"Question: {turns[i].value.replace('<image>', '').strip()} Answer: {turns[i + 1].value.strip()}"
        for i in range(0, len(turns) - 1, 2)
    ]


def context_text(fig: FigureRecord) -> str:
    """The figure's own text (caption + in-text mentions), shared by its candidates."""
    return f"{fig.fig_caption} {' '.join(fig.in_text_mention)}".strip()


def pool_rounds(feats: np.ndarray, owner: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and element-wise max of the L2-normalised round features of each of ``n`` candidates.

    The mean is left unnormalised: its length shrinks as the rounds say different things. The max keeps
    one odd round (a hedge, a wrong side) visible however many good rounds surround it.
    """
    unit = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-8)
    mean = np.zeros((n, feats.shape[1]), dtype=np.float32)
    mx = np.full((n, feats.shape[1]), -np.inf, dtype=np.float32)
    count = np.bincount(owner, minlength=n).astype(np.float32)
    np.add.at(mean, owner, unit)
    np.maximum.at(mx, owner, unit)
    if (count == 0).any():
        raise ValueError(f"pool_rounds: {int((count == 0).sum())} candidates have no round")
    return mean / count[:, None], mx


# ---------------------------------------------------------------- inputs
@dataclass
class EmbedInputs:
    figures: dict[str, FigureRecord]  # pair_id -> record, only figures with candidates
    candidates: list[Candidate]
    problems: dict[str, list[str]] = field(default_factory=dict)

    def problem(self, reason: str, detail: str) -> None:
        self.problems.setdefault(reason, []).append(detail)


def read_inputs(candidates_file: Path, sample_file: Path) -> EmbedInputs:
    """Candidates and their figure records; records that cannot be embedded are counted by reason."""
    for f in (candidates_file, sample_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: not found (run the upstream stage first)")
    sample: dict[str, FigureRecord] = {}
    out = EmbedInputs({}, [])
    for i, raw in enumerate(read_jsonl(sample_file), 1):
        try:
            rec = FigureRecord.model_validate(raw)
        except ValidationError as e:
            out.problem("invalid_figure_record", f"{sample_file}:{i}: {e.errors()[0]['msg']}")
            continue
        sample[rec.pair_id] = rec
    seen: set[str] = set()
    for i, raw in enumerate(read_jsonl(candidates_file), 1):
        try:
            cand = Candidate.model_validate(raw)
        except ValidationError as e:
            out.problem("invalid_candidate", f"{candidates_file}:{i}: {e.errors()[0]['msg']}")
            continue
        if cand.id in seen:
            out.problem("duplicate_candidate", f"{candidates_file}:{i}: {cand.id}")
            continue
        if cand.pair_id not in sample:
            out.problem(
                "unknown_figure", f"{candidates_file}:{i}: {cand.id} (figure {cand.pair_id} not in sample)"
            )
            continue
        if len(cand.conversations) < 2:
            out.problem("no_answer", f"{candidates_file}:{i}: {cand.id}")
            continue
        seen.add(cand.id)
        out.candidates.append(cand)
        out.figures.setdefault(cand.pair_id, sample[cand.pair_id])
    if not out.candidates:
        raise RecordError(f"{candidates_file}: no usable candidates ({_summary(out.problems)})")
    return out


def _summary(problems: dict[str, list[str]]) -> str:
    return ", ".join(f"{k}: {len(v)}" for k, v in problems.items()) or "no problems recorded"


# ---------------------------------------------------------------- images
class FigureImages(Dataset):
    """Decodes and preprocesses figure images in DataLoader workers; unreadable ones yield None."""

    def __init__(self, pair_ids: list[str], images: list[str], root: Path, preprocess: Callable):
        self.pair_ids, self.images, self.root, self.preprocess = pair_ids, images, root, preprocess

    def __len__(self) -> int:
        return len(self.pair_ids)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            with open_image(self.images[i], self.root) as im:
                return i, self.preprocess(im.convert("RGB")), ""
        except (OSError, UnidentifiedImageError, ValueError) as e:
            return i, None, f"{type(e).__name__}: {e}"


def _collate(items):
    good = [(i, t) for i, t, _ in items if t is not None]
    bad = [(i, err) for i, t, err in items if t is None]
    idx = torch.tensor([i for i, _ in good], dtype=torch.long)
    batch = torch.stack([t for _, t in good]) if good else None
    return idx, batch, bad


def image_batches(ds: FigureImages, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate, shuffle=False)


def image_features_and_side(
    model: torch.nn.Module, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``encode_image`` features and, from the same forward pass, the mean of the last layer's left-half
    patch tokens minus the right-half ones (None if the tower does not expose a square patch grid).
    The pooled embedding barely keeps laterality; the patch tokens (what LLaVA reads) do."""
    visual = getattr(model, "visual", None)
    if visual is None or not hasattr(visual, "output_tokens"):
        return model.encode_image(images), None
    old = visual.output_tokens
    visual.output_tokens = True
    try:
        pooled, tokens = visual(images)
    finally:
        visual.output_tokens = old
    g = math.isqrt(tokens.shape[1])
    if g * g != tokens.shape[1]:
        return pooled, None
    grid = tokens.reshape(len(images), g, g, -1)
    return pooled, grid[:, :, : g // 2].mean((1, 2)) - grid[:, :, g - g // 2 :].mean((1, 2))


def patch_side(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor | None:
    return image_features_and_side(model, images)[1]


@torch.no_grad()
def encode_images(
    model: torch.nn.Module, loader: DataLoader, n: int, device: str, side: bool = False
) -> tuple[np.ndarray, dict, np.ndarray | None]:
    """Image features (row i = figure i; NaN rows where the image failed), failures by index and, with
    ``side``, the left-minus-right patch features (None when the tower has no patch grid)."""
    feats: np.ndarray | None = None
    sides: np.ndarray | None = None
    failed: dict[int, str] = {}
    for idx, batch, bad in progress(loader, desc="embed images", total=len(loader)):
        failed.update(bad)
        if batch is None:
            continue
        batch = batch.to(device)
        pooled, ps = image_features_and_side(model, batch) if side else (model.encode_image(batch), None)
        out = pooled.float().cpu().numpy()
        if feats is None:
            feats = np.full((n, out.shape[1]), np.nan, dtype=np.float32)
        feats[idx.numpy()] = out
        if ps is not None:
            if sides is None:
                sides = np.zeros((n, ps.shape[1]), dtype=np.float32)
            sides[idx.numpy()] = ps.float().cpu().numpy()
    if feats is None:
        raise RecordError(f"no figure image could be decoded ({len(failed)} failed)")
    return feats, failed, sides


@torch.no_grad()
def encode_texts(
    model: torch.nn.Module, tokenizer: Callable, texts: list[str], batch_size: int, device: str
) -> tuple[np.ndarray, torch.Tensor]:
    """Text features and the token ids they came from (to count truncation)."""
    feats, tokens = [], []
    for i in progress(range(0, len(texts), batch_size), desc="embed texts"):
        tok = tokenizer(texts[i : i + batch_size])
        tokens.append(tok)
        feats.append(model.encode_text(tok.to(device)).float().cpu().numpy())
    return np.concatenate(feats), torch.cat(tokens)


# ---------------------------------------------------------------- backbone
def backbone_ref(ep: EmbedParams, paths: Paths) -> tuple[str, str | None]:
    """What ``embed.backbone`` points at. ``foundation`` = the foundation stage's output: its trained
    ``models/foundation/clip`` or, for ``backend: pretrained``, the checkpoint it recorded."""
    if ep.backbone != "foundation":
        return ep.backbone, ep.pretrained
    clip_dir = paths.foundation / "clip"
    record = clip_dir / "checkpoint.json"
    if record.is_file():
        rec = read_json(record)
        return rec["clip"], rec.get("checkpoint")
    if not clip_dir.is_dir():
        raise FileNotFoundError(f"{clip_dir}: missing (run the foundation stage first)")
    return str(clip_dir), None


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(ref: tuple[str, str | None], ep: EmbedParams, inputs: list[Path]) -> str:
    """Digest of everything the features depend on (not batch size, workers or device)."""
    h = hashlib.sha256(json.dumps([ref[0], ref[1], ep.text_order, ep.text_mode, ep.side_features]).encode())
    weights = [Path(ref[0]) / "open_clip_model.safetensors", Path(ref[1]) if ref[1] else None]
    for p in [*inputs, *(w for w in weights if w is not None and w.is_file())]:
        h.update(_file_digest(p).encode())
    return h.hexdigest()


# ---------------------------------------------------------------- store
@dataclass
class Embeddings:
    """Features keyed by candidate id (image rows shared by the candidates of one figure)."""

    candidate_ids: list[str]
    pair_ids: list[str]
    image: np.ndarray  # (N, D) per candidate, gathered from the per-figure table
    text: np.ndarray  # (N, D): the whole text (joint) or the mean of its rounds (rounds)
    meta: dict[str, Any]
    text_max: np.ndarray | None = None  # (N, D) rounds mode: element-wise max over rounds
    context: np.ndarray | None = None  # (N, D) rounds mode: caption + mention, gathered per figure
    round_sim: np.ndarray | None = None  # (N, 4) rounds mode: min/mean cos(round, image), cos(round, caption)
    text_side: np.ndarray | None = None  # (N, D) side_features: mean over rounds of unit(r) - unit(mirror(r))
    image_side: np.ndarray | None = None  # (N, 1) side_features: the figure's image side score in [-1, 1]

    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.candidate_ids)}


def save_embeddings(
    out_dir: Path,
    figure_ids: list[str],
    figure_feats: np.ndarray,
    candidate_ids: list[str],
    candidate_figure: np.ndarray,
    text_feats: np.ndarray,
    meta: dict[str, Any],
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    """``extra``: optional ``candidate_text_max`` (N, D) and ``figure_context`` (F, D) of rounds mode."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{FEATURES}.tmp.npz"
    save_npz(
        tmp,
        figure_ids=np.array(figure_ids),
        figure_image=figure_feats,
        candidate_ids=np.array(candidate_ids),
        candidate_figure=candidate_figure,
        candidate_text=text_feats,
        **(extra or {}),
    )
    tmp.replace(out_dir / FEATURES)
    write_json(out_dir / META, meta)


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` with fixed zip timestamps: equal arrays give equal bytes, so DVC sees an unchanged output
    (``np.savez`` stamps each member with the current time)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())


def load_embeddings(emb_dir: str | Path) -> Embeddings:
    emb_dir = Path(emb_dir)
    feats, meta = emb_dir / FEATURES, emb_dir / META
    if not feats.is_file() or not meta.is_file():
        raise FileNotFoundError(f"{emb_dir}: no embeddings ({FEATURES} + {META}); run the embed stage")
    z = np.load(feats)
    fig_ids = z["figure_ids"].tolist()
    cf = z["candidate_figure"]
    return Embeddings(
        candidate_ids=z["candidate_ids"].tolist(),
        pair_ids=[fig_ids[j] for j in cf],
        image=z["figure_image"][cf],
        text=z["candidate_text"],
        meta=read_json(meta),
        text_max=z["candidate_text_max"] if "candidate_text_max" in z.files else None,
        context=z["figure_context"][cf] if "figure_context" in z.files else None,
        round_sim=z["candidate_round_sim"] if "candidate_round_sim" in z.files else None,
        text_side=z["candidate_text_side"] if "candidate_text_side" in z.files else None,
        image_side=z["figure_side"][cf] if "figure_side" in z.files else None,
    )


# ---------------------------------------------------------------- stage
def _listed(problems: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "dropped": {k: len(v) for k, v in problems.items()},
        "dropped_examples": {k: v[:MAX_LISTED] for k, v in problems.items()},
    }


def text_stats(tokens: torch.Tensor, pair_ids: list[str]) -> dict[str, int]:
    """Texts that filled the whole context (= were cut) and figures whose candidates became identical."""
    at_limit = int((tokens[:, -1] != 0).sum())
    by_fig: dict[str, set[bytes]] = {}
    counts: dict[str, int] = {}
    for row, pid in zip(tokens, pair_ids, strict=True):
        by_fig.setdefault(pid, set()).add(row.numpy().tobytes())
        counts[pid] = counts.get(pid, 0) + 1
    collapsed = sum(1 for pid, rows in by_fig.items() if counts[pid] > 1 and len(rows) < counts[pid])
    return {"texts_at_context_limit": at_limit, "figures_with_identical_candidate_texts": collapsed}


def run(ep: EmbedParams, paths: Paths, force: bool = False) -> dict[str, Any]:
    """The embed stage: ``artifacts/embeddings/`` and ``metrics/embed.json``."""
    start = time.perf_counter()
    ref = backbone_ref(ep, paths)
    fp = fingerprint(ref, ep, [paths.candidates, paths.sample])
    meta_file = paths.embeddings / META
    if not force and meta_file.is_file() and (paths.embeddings / FEATURES).is_file():
        old = read_json(meta_file)
        if old.get("fingerprint") == fp:
            metrics = {**old, "skipped": True, "wall_seconds": round(time.perf_counter() - start, 2)}
            write_json(paths.metric("embed"), metrics)
            return metrics

    from vital.foundation import load_clip  # open_clip import is slow; readers of embeddings don't need it

    ranks = join_ranks(ep.device)  # one process, or one of `accelerate launch`'s (docs/scaling.md)
    inputs = read_inputs(paths.candidates, paths.sample)
    model, preprocess, tokenizer = load_clip(ref[0], ref[1], device=ranks.device)
    fig_ids = list(inputs.figures)
    ds = FigureImages(fig_ids, [inputs.figures[p].image for p in fig_ids], paths.corpus, preprocess)
    t0 = time.perf_counter()
    want_side = ep.side_features and ep.text_mode == "rounds"
    fig_feats, failed, fig_side = encode_images_ranked(model, ds, ep, len(fig_ids), want_side, ranks)
    image_s = time.perf_counter() - t0
    for i, err in failed.items():
        inputs.problem("unreadable_image", f"{fig_ids[i]}: {ds.images[i]} ({err})")
    bad_figs = {fig_ids[i] for i in failed}
    for c in inputs.candidates:
        if c.pair_id in bad_figs:
            inputs.problem("figure_image_unreadable", c.id)
    cands = [c for c in inputs.candidates if c.pair_id not in bad_figs]
    if not cands:
        raise RecordError(f"{paths.candidates}: no candidate has a readable figure image")
    t0 = time.perf_counter()
    extra: dict[str, np.ndarray] = {}
    if ep.text_mode == "joint":
        texts = [candidate_text(inputs.figures[c.pair_id], c, ep.text_order) for c in cands]
        text_feats, tokens = text_encoder(ranks)(model, tokenizer, texts, ep.batch_size, ranks.device)
        token_owner = [c.pair_id for c in cands]
    else:
        text_feats, tokens, token_owner, extra = _encode_rounds(
            model, tokenizer, inputs.figures, fig_ids, fig_feats, cands, ep, text_encoder(ranks), ranks.device
        )
    text_s = time.perf_counter() - t0
    side_info: dict[str, Any] = {}
    if want_side and fig_side is not None:
        labels = [stated_side(context_text(inputs.figures[p])) for p in fig_ids]
        for i in failed:
            labels[i] = None
        extra["figure_side"], side_info = side_scores(fig_side, labels, seed=0)
    row = {pid: i for i, pid in enumerate(fig_ids)}
    meta = {
        "fingerprint": fp,
        "backbone": ref[0],
        "pretrained": ref[1],
        "text_order": ep.text_order,
        "text_mode": ep.text_mode,
        "context_length": int(tokens.shape[1]),
        "dim_image": int(fig_feats.shape[1]),
        "dim_text": int(text_feats.shape[1]),
        "figures": len(fig_ids) - len(failed),
        "candidates": len(cands),
        **text_stats(tokens, token_owner),
        "side_features": bool(want_side and fig_side is not None),
        **side_info,
        **_listed(inputs.problems),
    }
    if not ranks.main:  # every rank holds the merged result; one writes it
        return meta
    save_embeddings(
        paths.embeddings,
        fig_ids,
        fig_feats,
        [c.id for c in cands],
        np.array([row[c.pair_id] for c in cands], dtype=np.int64),
        text_feats,
        meta,
        extra,
    )
    # timings go to the metrics only: in meta.json they would change the output's hash on every rerun
    metrics = {
        **meta,
        "image_seconds": round(image_s, 2),
        "text_seconds": round(text_s, 2),
        "skipped": False,
        **(
            {"data_parallel": {"processes": ranks.world, "rows_per_rank": ranks.rows}}
            if ranks.world > 1
            else {}
        ),
        "wall_seconds": round(time.perf_counter() - start, 2),
    }
    write_json(paths.metric("embed"), metrics)
    return metrics


def _encode_rounds(
    model: torch.nn.Module,
    tokenizer: Callable,
    figures: dict[str, FigureRecord],
    fig_ids: list[str],
    fig_feats: np.ndarray,
    cands: list[Candidate],
    ep: EmbedParams,
    encode: Callable[..., tuple[np.ndarray, torch.Tensor]] = encode_texts,
    device: str | None = None,
) -> tuple[np.ndarray, torch.Tensor, list[str], dict[str, np.ndarray]]:
    """Rounds mode: pooled round features, the round tokens (for truncation stats, keyed by candidate so
    that 'identical texts' means identical conversations) and the extra arrays to save."""
    texts: list[str] = []
    owner: list[int] = []
    for k, c in enumerate(cands):
        rounds = round_texts(c)
        texts += rounds
        owner += [k] * len(rounds)
    device = device or ep.device
    feats, tokens = encode(model, tokenizer, texts, ep.batch_size, device)
    mean, mx = pool_rounds(feats, np.array(owner), len(cands))
    context, _ = encode(model, tokenizer, [context_text(figures[p]) for p in fig_ids], ep.batch_size, device)
    conv_tokens = _conversation_tokens(tokens, owner, len(cands))
    row = {pid: i for i, pid in enumerate(fig_ids)}
    sims = round_sims(feats, np.array(owner), len(cands), fig_feats, context, [row[c.pair_id] for c in cands])
    extra = {"candidate_text_max": mx, "figure_context": context, "candidate_round_sim": sims}
    if ep.side_features:
        from vital.foundation.train import mirror_text

        mirrored, _ = encode(model, tokenizer, [mirror_text(t) for t in texts], ep.batch_size, device)
        extra["candidate_text_side"] = text_side(feats, mirrored, np.array(owner), len(cands))
    return mean, conv_tokens, [c.pair_id for c in cands], extra


def round_sims(
    feats: np.ndarray,
    owner: np.ndarray,
    n: int,
    image: np.ndarray,
    context: np.ndarray,
    figure_row: list[int],
) -> np.ndarray:
    """(n, 4) per candidate: min and mean over its rounds of each round's cosine with the figure's image
    and with its caption (CLIP's own agreement score; the min flags the one round that disagrees)."""

    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-8)

    rows = np.array(figure_row)[owner]
    r = unit(feats)
    sims = np.stack([(r * unit(image)[rows]).sum(1), (r * unit(context)[rows]).sum(1)], 1).astype(np.float32)
    mins = np.full((n, 2), np.inf, dtype=np.float32)
    np.minimum.at(mins, owner, sims)
    sums = np.zeros((n, 2), dtype=np.float32)
    np.add.at(sums, owner, sims)
    means = sums / np.maximum(np.bincount(owner, minlength=n), 1)[:, None]
    return np.stack([mins[:, 0], means[:, 0], mins[:, 1], means[:, 1]], 1)


def text_side(feats: np.ndarray, mirrored: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """(n, D) per candidate: mean over its rounds of unit(round) - unit(round with left/right swapped).

    Exactly zero for a round that names no side, so the vector is what the text says about laterality
    and nothing else; the head pairs it with the image's side score."""

    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-8)

    diff = unit(feats) - unit(mirrored)
    out = np.zeros((n, feats.shape[1]), dtype=np.float32)
    np.add.at(out, owner, diff)
    return out / np.maximum(np.bincount(owner, minlength=n), 1)[:, None]


def stated_side(text: str) -> float | None:
    """1.0 / 0.0 when a caption names only the left / only the right side, else None."""
    found = {m.lower() for m in _SIDE.findall(text)}
    return None if len(found) != 1 else (1.0 if found == {"left"} else 0.0)


def side_scores(
    patch_side: np.ndarray, labels: list[float | None], folds: int = 2, seed: int = 0
) -> tuple[np.ndarray, dict[str, Any]]:
    """Image side score in [-1, 1] (+1 = left) of every figure from its left-minus-right patch features.

    A logistic probe learns the direction from the figures whose own caption states one side
    (self-supervision from the figure's text, never the hidden truth); it is cross-fitted, so a figure's
    score never comes from a probe that saw its caption. Figures whose caption names no side are scored
    by the mean of the fold probes: that is where the image knows more than the caption."""
    n = len(patch_side)
    ok = np.flatnonzero(np.array([lab is not None for lab in labels]))
    if len(ok) < 4 * folds:
        return np.zeros((n, 1), dtype=np.float32), {"side_probe": f"skipped: {len(ok)} captions state a side"}
    y = torch.tensor([labels[i] for i in ok], dtype=torch.float32)
    x = torch.from_numpy(np.ascontiguousarray(patch_side, dtype=np.float32))
    fold = np.random.default_rng(seed).integers(0, folds, len(ok))
    logit = np.zeros(n, dtype=np.float32)
    unlabeled = np.setdiff1d(np.arange(n), ok)
    correct = 0
    for k in range(folds):
        tr, te = ok[fold != k], ok[fold == k]
        probe = _fit_probe(x[tr], y[fold != k], seed)
        with torch.no_grad():
            logit[te] = probe(x[te]).numpy()
            logit[unlabeled] += probe(x[unlabeled]).numpy() / folds
        correct += int(((logit[te] > 0) == (y[fold == k].numpy() > 0.5)).sum())
    info = {"side_probe_captions": len(ok), "side_probe_crossfit_accuracy": round(correct / len(ok), 4)}
    return np.tanh(logit / 2)[:, None].astype(np.float32), info


def _fit_probe(
    x: torch.Tensor, y: torch.Tensor, seed: int, steps: int = 300
) -> Callable[[torch.Tensor], torch.Tensor]:
    mu, sd = x.mean(0), x.std(0) + 1e-6
    torch.manual_seed(seed)
    lin = torch.nn.Linear(x.shape[1], 1)
    opt = torch.optim.Adam(lin.parameters(), lr=0.05, weight_decay=1e-3)
    z = (x - mu) / sd
    with torch.enable_grad():
        for _ in range(steps):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(lin(z).squeeze(1), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return lambda q: lin((q - mu) / sd).squeeze(1)


def _conversation_tokens(tokens: torch.Tensor, owner: list[int], n: int) -> torch.Tensor:
    """One row per candidate: its round token rows side by side (zero-padded), for ``text_stats``.

    A candidate counts as cut when any of its rounds filled the context."""
    per: list[list[torch.Tensor]] = [[] for _ in range(n)]
    for row, k in zip(tokens, owner, strict=True):
        per[k].append(row)
    width = max(len(p) for p in per) * tokens.shape[1]
    out = torch.zeros((n, width), dtype=tokens.dtype)
    cut = torch.zeros(n, dtype=torch.bool)
    for k, rows in enumerate(per):
        flat = torch.cat(rows)
        out[k, : len(flat)] = flat
        cut[k] = any(bool(r[-1] != 0) for r in rows)
    out[:, -1] = torch.where(cut, torch.ones_like(out[:, -1]), torch.zeros_like(out[:, -1]))
    return out


def iter_figure_batches(loader: DataLoader) -> Iterator[torch.Tensor]:
    """Preprocessed image batches only (the bench's 'bare forward' input)."""
    for _, batch, _ in loader:
        if batch is not None:
            yield batch


# ---------------------------------------------------------------- data parallel (accelerate launch / torchrun)
@dataclass
class Ranks:
    """This process's place among the embed processes; ``world == 1`` is the plain single-process run."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"
    rows: dict[str, list[int]] = field(default_factory=dict)  # rows each rank encoded, per kind (metrics)

    @property
    def main(self) -> bool:
        return self.rank == 0


def join_ranks(device: str) -> Ranks:
    """Join the process group that ``accelerate launch`` (or ``torchrun``) describes in the environment
    (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``); gloo on CPU, NCCL on GPUs, one GPU per
    process. Without those variables: one process, nothing joined."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(device=device)
    import torch.distributed as dist

    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return Ranks(dist.get_rank(), dist.get_world_size(), device)


def rank_rows(n: int, batch_size: int, rank: int, world: int) -> np.ndarray:
    """The rows one rank encodes: whole batches of the single-process order, dealt round-robin. Every
    batch a rank encodes is exactly a batch the single process encodes (same rows, same shape), which is
    what makes the merged features the same bytes, not just close."""
    starts = range(0, n, batch_size)[rank::world]
    if not starts:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(s, min(s + batch_size, n)) for s in starts])


def gather_rows(ranks: Ranks, kind: str, rows: np.ndarray, local: Any) -> list[tuple[np.ndarray, Any]]:
    """Every rank's ``(rows, payload)``, in rank order, on every rank; records the row counts."""
    import torch.distributed as dist

    parts: list[Any] = [None] * ranks.world
    dist.all_gather_object(parts, (rows, local))
    old = ranks.rows.get(kind, [0] * ranks.world)
    ranks.rows[kind] = [o + len(r) for o, (r, _) in zip(old, parts, strict=True)]
    return parts


def _place(parts: list[tuple[np.ndarray, np.ndarray | None]], n: int, fill: float) -> np.ndarray | None:
    """One (n, D) array from per-rank row blocks, placed by row index (rank finishing order is irrelevant)."""
    blocks = [(r, a) for r, a in parts if a is not None and len(r)]
    if not blocks:
        return None
    out = np.full((n, *blocks[0][1].shape[1:]), fill, dtype=blocks[0][1].dtype)
    for r, a in blocks:
        out[r] = a
    return out


def encode_images_ranked(
    model: torch.nn.Module, ds: FigureImages, ep: EmbedParams, n: int, side: bool, ranks: Ranks
) -> tuple[np.ndarray, dict, np.ndarray | None]:
    """``encode_images`` over this rank's batches, merged on every rank into the single-process result."""
    if ranks.world == 1:
        return encode_images(model, image_batches(ds, ep.batch_size, ep.num_workers), n, ranks.device, side)
    from torch.utils.data import Subset

    rows = rank_rows(n, ep.batch_size, ranks.rank, ranks.world)
    feats = sides = None
    failed: dict[int, str] = {}
    if len(rows):
        loader = image_batches(Subset(ds, rows.tolist()), ep.batch_size, ep.num_workers)
        try:
            feats, failed, sides = encode_images(model, loader, n, ranks.device, side)
        except RecordError:  # none of this rank's figures decoded; the merge decides whether any did
            failed = {int(i): "undecodable" for i in rows}
    parts = gather_rows(
        ranks,
        "images",
        rows,
        (feats[rows] if feats is not None else None, failed, None if sides is None else sides[rows]),
    )
    merged_failed = {i: err for _, (_, f, _) in parts for i, err in f.items()}
    feats_all = _place([(r, p[0]) for r, p in parts], n, np.nan)
    if feats_all is None:
        raise RecordError(f"no figure image could be decoded ({len(merged_failed)} failed)")
    return feats_all, dict(sorted(merged_failed.items())), _place([(r, p[2]) for r, p in parts], n, 0.0)


def text_encoder(ranks: Ranks) -> Callable[..., tuple[np.ndarray, torch.Tensor]]:
    """``encode_texts`` for one process, or its rank-split version that returns the merged result."""
    if ranks.world == 1:
        return encode_texts

    def encode(model, tokenizer, texts: list[str], batch_size: int, device: str):
        rows = rank_rows(len(texts), batch_size, ranks.rank, ranks.world)
        local = None
        if len(rows):
            f, t = encode_texts(model, tokenizer, [texts[i] for i in rows], batch_size, device)
            local = (f, t.numpy())
        parts = gather_rows(ranks, "texts", rows, local)
        feats = _place([(r, p[0] if p else None) for r, p in parts], len(texts), 0.0)
        tokens = _place([(r, p[1] if p else None) for r, p in parts], len(texts), 0)
        return feats, torch.from_numpy(tokens)

    return encode
