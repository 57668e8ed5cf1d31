"""Data-parallel embedding (``accelerate launch`` / ``torchrun``): each rank encodes whole batches of the
single-process order, and every rank merges them by row index into the single-process bytes."""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vital.embed.images import FigureImages, encode_images, image_batches
from vital.embed.text import encode_texts
from vital.io import RecordError
from vital.params import EmbedParams


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
