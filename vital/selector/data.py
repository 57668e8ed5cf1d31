"""The select stage's inputs: preference pairs (as index tensors), judge scores and clinician rankings."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vital.artifacts.labels import read_labels
from vital.artifacts.lines import records, require
from vital.artifacts.scores import judge_scores
from vital.drops import Drops
from vital.schema import Pair, Preference


@dataclass
class PairSet:
    winner: torch.Tensor  # row indices into the feature matrix
    loser: torch.Tensor
    weight: torch.Tensor
    source: list[str]
    pair_id: list[str]

    def __len__(self) -> int:
        return len(self.source)

    def subset(self, mask: np.ndarray) -> PairSet:
        idx = np.flatnonzero(mask)
        t = torch.as_tensor(idx, dtype=torch.long)
        return PairSet(
            self.winner[t],
            self.loser[t],
            self.weight[t],
            [self.source[i] for i in idx],
            [self.pair_id[i] for i in idx],
        )


def read_pairs(path: Path, index: dict[str, int], drops: Drops) -> dict[str, list[Pair]]:
    """Pairs by split; a bad line (``bad_line``), a pair naming a candidate without features or a candidate
    with itself is dropped and counted."""
    require(path)
    out: dict[str, list[Pair]] = defaultdict(list)

    for where, _, p in records(path, Pair, drops):
        missing = [c for c in (p.winner, p.loser) if c not in index]
        if missing:
            drops.add("pair_without_features", where, str(missing))
            continue
        if p.winner == p.loser:
            drops.add("pair_with_itself", where, p.winner)
            continue
        out[p.split].append(p)
    return out


def to_pairset(pairs: list[Pair], index: dict[str, int], human_weight: float) -> PairSet:
    return PairSet(
        winner=torch.tensor([index[p.winner] for p in pairs], dtype=torch.long),
        loser=torch.tensor([index[p.loser] for p in pairs], dtype=torch.long),
        weight=torch.tensor(
            [human_weight if p.source == "human" else 1.0 for p in pairs], dtype=torch.float32
        ),
        source=[p.source for p in pairs],
        pair_id=[p.pair_id for p in pairs],
    )


def read_scores_of_judge(path: Path) -> dict[str, float]:
    return judge_scores(path, Drops())  # unusable lines: counted by the pairs stage, which reads them too


def read_prefs(path: Path) -> list[Preference]:
    return read_labels(path, Drops()) if path.is_file() else []  # unusable lines: counted by the pairs stage
