"""The rating head and the rater that runs it on the embed stage's fixed features."""

from __future__ import annotations

import torch


class RatingHead(torch.nn.Module):
    """MLP -> one unbounded rating per candidate (no sigmoid: a hinge on sigmoid differences never reaches 0)."""

    def __init__(self, in_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(in_dim, hidden),
            torch.nn.GELU(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, hidden),
            torch.nn.GELU(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, 1),
        )

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
