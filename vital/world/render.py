"""Modality-styled phantom figures with visible findings (numpy + PIL, vectorised).

Each domain has its own look so a small image encoder can tell them apart, and lesions are drawn
with enough contrast that side, count and size are readable at 64 px.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return (x + 0.5) / size, (y + 0.5) / size


def _ellipse(x, y, cx, cy, rx, ry) -> np.ndarray:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2


def _disks(x, y, lesions: list[list[float]], soft: float = 0.35) -> np.ndarray:
    """Union of soft-edged disks in [0, 1]."""
    mask = np.zeros_like(x)
    for cx, cy, r in lesions:
        d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / r
        mask = np.maximum(mask, np.clip((1 + soft - d) / soft, 0, 1))
    return mask


def _smooth_noise(size: int, rng: np.random.Generator, cells: int = 8) -> np.ndarray:
    """Low-frequency texture in [0, 1] (bilinear upsampling of a coarse random grid)."""
    coarse = rng.random((cells + 1, cells + 1)).astype(np.float32)
    img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def _finish(channels: np.ndarray, rng: np.random.Generator, grain: float) -> np.ndarray:
    # coarse quantisation of the grain keeps PNGs small without looking flat
    noisy = channels + np.round(rng.normal(0, grain, channels.shape) / 4) * 4
    return np.clip(noisy, 0, 255).astype(np.uint8)


def chest_xray(truth: dict, size: int, rng: np.random.Generator) -> Image.Image:
    x, y = _grid(size)
    dx = rng.uniform(-0.02, 0.02)
    img = np.full_like(x, 15.0)
    img[_ellipse(x, y, 0.5 + dx, 0.55, 0.46, 0.5) < 1] = 150
    lungs = (_ellipse(x, y, 0.3 + dx, 0.5, 0.17, 0.32) < 1) | (_ellipse(x, y, 0.7 + dx, 0.5, 0.17, 0.32) < 1)
    ribs = 12 * (np.sin(y * 2 * np.pi * 7) > 0.6)
    img[lungs] = 55 + ribs[lungs]
    img[np.abs(x - 0.5 - dx) < 0.05] = 190  # spine / mediastinum
    lesions = [[cx + dx, cy, r] for cx, cy, r in truth["lesions"]]
    img = img * (1 - _disks(x, y, lesions)) + 215 * _disks(x, y, lesions)
    return Image.fromarray(_finish(img, rng, 5), mode="L")


def ct_scan(truth: dict, size: int, rng: np.random.Generator) -> Image.Image:
    x, y = _grid(size)
    e = _ellipse(x, y, 0.5, 0.5, 0.44, 0.38)
    img = np.zeros_like(x)
    body = e < 1
    img[body] = 105 + 25 * _smooth_noise(size, rng)[body]
    img[(e > 0.78) & body] = 225  # bone ring
    img[_ellipse(x, y, 0.5, 0.78, 0.07, 0.06) < 1] = 235  # vertebral body
    d = _disks(x, y, truth["lesions"])
    img = img * (1 - d) + 35 * d
    return Image.fromarray(_finish(img, rng, 4), mode="L")


def mri(truth: dict, size: int, rng: np.random.Generator) -> Image.Image:
    x, y = _grid(size)
    e = _ellipse(x, y, 0.5, 0.5, 0.4, 0.46)
    img = np.full_like(x, 5.0)
    brain = e < 0.85
    phase = rng.uniform(0, 2 * np.pi)
    gyri = np.sin(np.sqrt((x - 0.5) ** 2 + (y - 0.5) ** 2) * 60 + phase + 3 * _smooth_noise(size, rng, 5))
    img[brain] = 95 + 30 * gyri[brain]
    img[(e >= 0.85) & (e < 1)] = 60  # skull
    img[(_ellipse(x, y, 0.45, 0.5, 0.03, 0.12) < 1) | (_ellipse(x, y, 0.55, 0.5, 0.03, 0.12) < 1)] = 20
    d = _disks(x, y, truth["lesions"])
    img = img * (1 - d) + 245 * d
    return Image.fromarray(_finish(img, rng, 4), mode="L")


def histology(truth: dict, size: int, rng: np.random.Generator) -> Image.Image:
    x, y = _grid(size)
    tone = _smooth_noise(size, rng, 6)[..., None]
    pink = np.array([232, 168, 200], np.float32)
    img = np.broadcast_to(pink, (size, size, 3)) - 25 * tone
    n = 45
    nuclei = [[float(a), float(b), 0.018] for a, b in rng.uniform(0.03, 0.97, (n, 2))]
    nuc = _disks(x, y, nuclei, soft=0.5)[..., None]
    purple = np.array([120, 60, 150], np.float32)
    img = img * (1 - nuc) + purple * nuc
    nests = _disks(x, y, truth["lesions"], soft=0.25)[..., None]
    dark = np.array([70, 25, 105], np.float32)
    img = img * (1 - nests) + dark * nests
    return Image.fromarray(_finish(img, rng, 4), mode="RGB")


def gross(truth: dict, size: int, rng: np.random.Generator) -> Image.Image:
    x, y = _grid(size)
    drape = np.array([45, 95, 115], np.float32)
    img = np.broadcast_to(drape, (size, size, 3)).copy()
    blob = _ellipse(x, y, 0.5, 0.5, 0.45 + rng.uniform(-0.02, 0.02), 0.4)
    wobble = 0.15 * _smooth_noise(size, rng, 4)
    tissue = (blob + wobble) < 1.05
    base = np.array([175, 95, 75], np.float32) + rng.uniform(-15, 15, 3)
    shade = 30 * _smooth_noise(size, rng, 6)[..., None]
    img[tissue] = (base - shade)[tissue]
    d = _disks(x, y, truth["lesions"], soft=0.3)[..., None]
    pale = np.array([238, 226, 190], np.float32)
    img = img * (1 - d) + pale * d
    return Image.fromarray(_finish(img, rng, 4), mode="RGB")


RENDERERS: dict[str, Callable[[dict, int, np.random.Generator], Image.Image]] = {
    "chest_xray": chest_xray,
    "ct_scan": ct_scan,
    "mri": mri,
    "histology": histology,
    "gross": gross,
}


def render(truth: dict, size: int, rng: np.random.Generator) -> Image.Image:
    try:
        draw = RENDERERS[truth["domain"]]
    except KeyError:
        raise ValueError(f"{truth.get('pair_id')}: no renderer for domain {truth.get('domain')!r}") from None
    return draw(truth, size, rng)
