"""The side probe: an image side score per figure, learnt from the figures whose caption states a side."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

_SIDE = re.compile(r"\b(left|right)\b", re.IGNORECASE)  # as the foundation's mirror augmentation


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
