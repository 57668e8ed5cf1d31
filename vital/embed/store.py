"""The feature store (``artifacts/embeddings/``): features keyed by candidate id, saved with stable bytes."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vital.io import read_json, write_json

FEATURES = "features.npz"
META = "meta.json"


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
