"""The embed stage: ``artifacts/embeddings/`` and ``metrics/embed.json``, skipped when nothing changed."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vital.embed.images import FigureImages
from vital.embed.inputs import read_inputs
from vital.embed.probe import side_scores, stated_side
from vital.embed.ranks import encode_images_ranked, join_ranks, text_encoder
from vital.embed.rounds import encode_rounds
from vital.embed.store import FEATURES, META, save_embeddings
from vital.embed.text import candidate_text, context_text
from vital.io import RecordError, read_json
from vital.params import EmbedParams, Params
from vital.paths import Paths


def _pinned(param: str, spec: str, revision: str | None, paths: Paths) -> str:
    """An ``hf-hub:`` backbone as the local snapshot of its resolved commit (``local-dir:``); else ``spec``."""
    if not spec.startswith("hf-hub:"):
        return spec
    from vital.hub import pinned

    path, _ = pinned(param, spec, revision, paths.root)
    return f"local-dir:{path}"


def backbone_ref(ep: EmbedParams, paths: Paths) -> tuple[str, str | None]:
    """What ``embed.backbone`` points at. ``foundation`` = the foundation stage's output: its trained
    ``models/foundation/clip`` or, for ``backend: pretrained``, the checkpoint it recorded."""
    if ep.backbone != "foundation":
        return _pinned("embed.backbone", ep.backbone, ep.backbone_revision, paths), ep.pretrained
    clip_dir = paths.foundation / "clip"
    record = clip_dir / "checkpoint.json"
    if record.is_file():
        rec = read_json(record)
        commit = (rec.get("hub") or {}).get("commit")  # the commit foundation resolved
        return _pinned("foundation.clip", rec["clip"], commit, paths), rec.get("checkpoint")
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
    knobs = [ref[0], ref[1], ep.text_order, ep.text_mode, ep.side_features]
    if ep.text_rounds != "all":  # the default adds nothing: features made before the knob existed stay valid
        knobs.append(ep.text_rounds)
    h = hashlib.sha256(json.dumps(knobs).encode())
    weights = [Path(ref[0]) / "open_clip_model.safetensors", Path(ref[1]) if ref[1] else None]
    for p in [*inputs, *(w for w in weights if w is not None and w.is_file())]:
        h.update(_file_digest(p).encode())
    return h.hexdigest()


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
    ref = backbone_ref(ep, paths)
    fp = fingerprint(ref, ep, [paths.candidates, paths.sample])
    meta_file = paths.embeddings / META
    if not force and meta_file.is_file() and (paths.embeddings / FEATURES).is_file():
        old = read_json(meta_file)
        if old.get("fingerprint") == fp:
            return {**old, "skipped": True}

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
        inputs.problem("unreadable_image", fig_ids[i], f"{ds.images[i]} ({err})")
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
        texts = [candidate_text(inputs.figures[c.pair_id], c, ep.text_order, ep.text_rounds) for c in cands]
        text_feats, tokens = text_encoder(ranks)(model, tokenizer, texts, ep.batch_size, ranks.device)
        token_owner = [c.pair_id for c in cands]
    else:
        text_feats, tokens, token_owner, extra = encode_rounds(
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
        **({"text_rounds": ep.text_rounds} if ep.text_rounds != "all" else {}),
        "context_length": int(tokens.shape[1]),
        "dim_image": int(fig_feats.shape[1]),
        "dim_text": int(text_feats.shape[1]),
        "figures": len(fig_ids) - len(failed),
        "candidates": len(cands),
        **text_stats(tokens, token_owner),
        "side_features": bool(want_side and fig_side is not None),
        **side_info,
        **inputs.drops.metrics(),
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
    }
    return metrics


def run_stage(p: Params, paths: Paths) -> dict[str, Any]:
    return run(p.embed, paths)
