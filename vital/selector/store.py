"""The saved selector: the head's weights and its config (``models/selector/``), and scoring with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vital.embed.store import Embeddings
from vital.io import read_json, write_json
from vital.selector.features import embedding_features
from vital.selector.model import RatingHead

WEIGHTS = "head.safetensors"
CONFIG = "config.json"


def save_selector(out: Path, head: RatingHead, config: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(out / WEIGHTS))
    write_json(out / CONFIG, config)


def load_selector(path: str | Path) -> tuple[RatingHead, dict[str, Any]]:
    path = Path(path)
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        raise FileNotFoundError(f"{path}: not a selector directory ({CONFIG} + {WEIGHTS})")
    cfg = read_json(path / CONFIG)
    head = RatingHead(cfg["in_dim"], cfg["hidden"], cfg["dropout"], cfg.get("head", "vital"))
    head.load_state_dict(load_file(str(path / WEIGHTS)))
    head.eval()
    return head, cfg


@torch.no_grad()
def score_all(head: RatingHead, emb: Embeddings, shape: str = "vital") -> np.ndarray:
    return head(embedding_features(emb, shape)).numpy()
