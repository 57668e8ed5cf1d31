"""Embed once: image and text features of every candidate, keyed by candidate id.

Image features are computed once per figure and shared by its candidates; text features once per
candidate. A sweep over the selector head never touches this stage (its DVC deps are the backbone, the
candidates and the sample), and ``run`` itself skips the work when its fingerprint is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError
from torch.utils.data import DataLoader, Dataset

from vital.io import RecordError, read_json, read_jsonl, write_json
from vital.params import EmbedParams
from vital.paths import Paths
from vital.progress import progress
from vital.schema import Candidate, FigureRecord

FEATURES = "features.npz"
META = "meta.json"
MAX_LISTED = 50


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
            with Image.open(self.root / self.images[i]) as im:
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


@torch.no_grad()
def encode_images(model: torch.nn.Module, loader: DataLoader, n: int, device: str) -> tuple[np.ndarray, dict]:
    """Image features (row i = figure i; NaN rows where the image failed) and failures by index."""
    feats: np.ndarray | None = None
    failed: dict[int, str] = {}
    for idx, batch, bad in progress(loader, desc="embed images", total=len(loader)):
        failed.update(bad)
        if batch is None:
            continue
        out = model.encode_image(batch.to(device)).float().cpu().numpy()
        if feats is None:
            feats = np.full((n, out.shape[1]), np.nan, dtype=np.float32)
        feats[idx.numpy()] = out
    if feats is None:
        raise RecordError(f"no figure image could be decoded ({len(failed)} failed)")
    return feats, failed


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
    h = hashlib.sha256(json.dumps([ref[0], ref[1], ep.text_order]).encode())
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
    text: np.ndarray  # (N, D)
    meta: dict[str, Any]

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
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{FEATURES}.tmp.npz"
    np.savez(
        tmp,
        figure_ids=np.array(figure_ids),
        figure_image=figure_feats,
        candidate_ids=np.array(candidate_ids),
        candidate_figure=candidate_figure,
        candidate_text=text_feats,
    )
    tmp.replace(out_dir / FEATURES)
    write_json(out_dir / META, meta)


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

    inputs = read_inputs(paths.candidates, paths.sample)
    model, preprocess, tokenizer = load_clip(ref[0], ref[1], device=ep.device)
    fig_ids = list(inputs.figures)
    ds = FigureImages(fig_ids, [inputs.figures[p].image for p in fig_ids], paths.corpus, preprocess)
    t0 = time.perf_counter()
    fig_feats, failed = encode_images(
        model, image_batches(ds, ep.batch_size, ep.num_workers), len(fig_ids), ep.device
    )
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
    texts = [candidate_text(inputs.figures[c.pair_id], c, ep.text_order) for c in cands]
    t0 = time.perf_counter()
    text_feats, tokens = encode_texts(model, tokenizer, texts, ep.batch_size, ep.device)
    text_s = time.perf_counter() - t0
    row = {pid: i for i, pid in enumerate(fig_ids)}
    meta = {
        "fingerprint": fp,
        "backbone": ref[0],
        "pretrained": ref[1],
        "text_order": ep.text_order,
        "context_length": int(tokens.shape[1]),
        "dim_image": int(fig_feats.shape[1]),
        "dim_text": int(text_feats.shape[1]),
        "figures": len(fig_ids) - len(failed),
        "candidates": len(cands),
        **text_stats(tokens, [c.pair_id for c in cands]),
        **_listed(inputs.problems),
        "image_seconds": round(image_s, 2),
        "text_seconds": round(text_s, 2),
        "skipped": False,
    }
    save_embeddings(
        paths.embeddings,
        fig_ids,
        fig_feats,
        [c.id for c in cands],
        np.array([row[c.pair_id] for c in cands], dtype=np.int64),
        text_feats,
        meta,
    )
    metrics = {**meta, "wall_seconds": round(time.perf_counter() - start, 2)}
    write_json(paths.metric("embed"), metrics)
    return metrics


def iter_figure_batches(loader: DataLoader) -> Iterator[torch.Tensor]:
    """Preprocessed image batches only (the bench's 'bare forward' input)."""
    for _, batch, _ in loader:
        if batch is not None:
            yield batch
