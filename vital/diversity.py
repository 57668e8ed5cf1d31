"""The sample's diversity step (``sample.diversity``): k-means over caption and thumbnail features, then a
round-robin draw across the clusters, so every kind of figure in a domain is represented before any gives a
second one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vital.params import SampleParams
from vital.seeding import stable_seed
from vital.shards import open_image


def _hashed_words(text: str, n: int) -> np.ndarray:
    v = np.zeros(n, dtype=np.float32)
    for w in text.lower().split():
        w = w.strip(".,;:()[]")
        if len(w) > 2:
            v[stable_seed("w", w) % n] += 1.0
    norm = np.linalg.norm(v)
    return v / norm if norm else v


def _thumbnail(image: str, root: Path) -> np.ndarray | None:
    try:
        with open_image(image, root) as im:
            px = np.asarray(im.convert("L").resize((4, 4)), dtype=np.float32).ravel() / 255.0
    except Exception:
        return None
    return px - px.mean()


def diverse(
    pool: list[tuple[int, int, dict]], n: int, cfg: SampleParams, root: Path
) -> list[tuple[int, int, dict]]:
    """n items of ``pool`` (key, ordinal, raw) drawn across k-means clusters of caption+image features.

    Clusters are visited round-robin (ordered by their smallest key), each giving its next item in
    key order, so every cluster is represented before any gives a second item. Seeded by ``cfg.seed``.
    """
    div = cfg.diversity
    pool = sorted(pool)
    if len(pool) <= n:
        return pool
    feats = []
    for _, _, raw in pool:
        text = _hashed_words(f"{raw.get('fig_caption', '')}", div.features)
        img = raw.get("image")
        thumb = _thumbnail(img, root) if isinstance(img, str) and cfg.corpus.check_images else None
        feats.append(np.concatenate([text, thumb if thumb is not None else np.zeros(16, np.float32)]))
    x = np.stack(feats)
    k = min(div.clusters, len(pool))
    rng = np.random.default_rng(stable_seed(cfg.seed, "sample-diversity"))
    centers = x[rng.choice(len(x), size=k, replace=False)]
    labels = np.zeros(len(x), dtype=np.int64)
    for _ in range(div.iterations):
        # squared distances without the (pool x k x features) difference tensor
        d = (centers**2).sum(1)[None, :] - 2.0 * x @ centers.T
        labels = d.argmin(1)
        for c in range(k):
            members = x[labels == c]
            if len(members):
                centers[c] = members.mean(0)
    queues: dict[int, list[int]] = {}
    for i, c in enumerate(labels):  # pool is in key order, so each queue is too
        queues.setdefault(int(c), []).append(i)
    order = sorted(queues.values(), key=lambda q: q[0])
    chosen: list[int] = []
    while len(chosen) < n:
        for q in order:
            if q and len(chosen) < n:
                chosen.append(q.pop(0))
    return [pool[i] for i in chosen]
