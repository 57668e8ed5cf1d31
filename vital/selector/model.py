"""The rating head and the rater that runs it on the embed stage's fixed features."""

from __future__ import annotations

import torch


class RatingHead(torch.nn.Module):
    """MLP -> one rating per candidate.

    ``vital``: 2 GELU layers, an unbounded rating (no sigmoid: a hinge on sigmoid differences never reaches
    0). ``paper``: BioMed-VITAL's head, 3 ReLU layers and a sigmoid, kept as the reference trains it.
    """

    def __init__(self, in_dim: int, hidden: int, dropout: float, shape: str = "vital"):
        super().__init__()
        act = torch.nn.ReLU if shape == "paper" else torch.nn.GELU
        layers: list[torch.nn.Module] = []
        for i in range(3 if shape == "paper" else 2):
            layers += [
                torch.nn.Linear(in_dim if i == 0 else hidden, hidden),
                act(),
                torch.nn.Dropout(dropout),
            ]
        layers.append(torch.nn.Linear(hidden, 1))
        if shape == "paper":
            layers.append(torch.nn.Sigmoid())
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class FrozenFeatureRater(torch.nn.Module):
    """``forward(candidate indices) -> ratings`` of the head on the embed stage's fixed features."""

    def __init__(self, head: RatingHead, x: torch.Tensor):
        super().__init__()
        self.head, self.x = head, x

    def __len__(self) -> int:
        return len(self.x)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.x[idx.to(self.x.device)])

    def to_device(self, device: str) -> FrozenFeatureRater:
        self.to(device)
        self.x = self.x.to(device)
        return self

    def backbone_parameters(self) -> list[torch.nn.Parameter]:
        return []
