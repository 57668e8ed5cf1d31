"""Figure images: decoded in DataLoader workers, encoded once per figure (with the patch tokens' side)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from vital.io import RecordError
from vital.progress import progress
from vital.shards import open_image


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


def iter_figure_batches(loader: DataLoader) -> Iterator[torch.Tensor]:
    """Preprocessed image batches only (the bench's 'bare forward' input)."""
    for _, batch, _ in loader:
        if batch is not None:
            yield batch
