"""``selector.judge_input: residual``: the selector rates on top of the judge instead of beside it.

The rating is ``a * judge_score + head(features)``, with ``a`` learned (starting at 1) and the head's last
layer starting at zero, so before any step the selector *is* the judge. Training keeps the epoch with the
best validation agreement, and the untrained state (the judge alone) counts as epoch 0: on validation pairs
the selector can only match or beat the judge. A head that learns nothing useful from clinician pairs
therefore falls back to the judge rather than to a noisy distillation of it.
"""

from __future__ import annotations

import numpy as np
import torch

from vital.io import RecordError
from vital.params import SelectorParams
from vital.selector.data import PairSet
from vital.selector.train import TrainResult, rate_all, train_rater, weighted_agreement


def judge_tensor(ids: list[str], judge: dict[str, float], where: str) -> torch.Tensor:
    """Judge scores in embedding order; a candidate the judge did not score gets the mean score (named in
    the error only when none was scored)."""
    known = [judge[c] for c in ids if c in judge]
    if not known:
        raise RecordError(
            f"{where}: no judge score for any embedded candidate (selector.judge_input=residual)"
        )
    mean = sum(known) / len(known)
    return torch.tensor([judge.get(c, mean) for c in ids], dtype=torch.float32)


class ResidualHead(torch.nn.Module):
    """The trainable part: the rating head (``mlp``, saved as the selector's head) and the judge's weight
    (saved in its config). ``train_rater`` optimises ``rater.head.parameters()``, so both train."""

    def __init__(self, mlp: torch.nn.Module):
        super().__init__()
        self.mlp = mlp
        self.judge_weight = torch.nn.Parameter(torch.ones(()))
        last = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)][-1]
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)


class JudgeResidualRater(torch.nn.Module):
    """``forward(idx) = a * judge[idx] + inner(idx)``: a learned weight on the judge plus a residual head."""

    def __init__(self, inner: torch.nn.Module, judge: torch.Tensor):
        super().__init__()
        self.inner = inner
        self.head = ResidualHead(inner.head)
        self.register_buffer("judge", judge)

    def __len__(self) -> int:
        return len(self.inner)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head.judge_weight * self.judge[idx.to(self.judge.device)] + self.inner(idx)

    def backbone_parameters(self) -> list[torch.nn.Parameter]:
        return self.inner.backbone_parameters()


def train_on_judge(
    rater: JudgeResidualRater, train: PairSet, val: PairSet, sp: SelectorParams, desc: str = "selector"
) -> TrainResult:
    """Train the residual rater; keep the judge alone (epoch 0) unless an epoch beats it on validation."""
    judge_alone = weighted_agreement(rate_all(rater), val if len(val) else train)
    start = {k: v.detach().clone() for k, v in rater.state_dict().items()}
    result = train_rater(rater, train, val, sp, desc=desc)
    best = max((c["val_agreement"] for c in result.curve), default=float("-inf"))
    if not best > judge_alone + 1e-6:
        rater.load_state_dict(start)
        rater.eval()
        return TrainResult(rater, result.curve, best_epoch=0, stopped_early=result.stopped_early)
    return result


def saved_head(head: torch.nn.Module, config: dict) -> torch.nn.Module:
    """The module ``save_selector`` stores (the rating MLP); a residual selector's judge weight goes in
    ``config`` so that its rating can be rebuilt as ``judge_weight * judge score + head``."""
    if isinstance(head, ResidualHead):
        config["judge_weight"] = round(float(head.judge_weight.detach()), 6)
        return head.mlp
    return head


def gap_over_seeds(
    by_seed: dict[int, dict[str, float]],
    judge: dict[str, float] | dict[int, dict[str, float]],
    pairs: list,
    seed: int,
    n: int = 1000,
) -> dict | None:
    """Selector - judge agreement on ``pairs`` per selector seed, and its mean over seeds with a 95% interval
    from resampling figures (each figure's pairs, under every seed, move together). ``judge`` may also be
    another rater trained at the same seeds (``{seed: scores}``, e.g. the weight-0 head): then each seed is
    compared with its own seed, and the mean with that rater's mean over seeds."""
    others = judge if judge and isinstance(next(iter(judge.values())), dict) else {k: judge for k in by_seed}
    any_other = next(iter(others.values()), {})
    pairs = [p for p in pairs if p.winner in any_other and p.loser in any_other]
    if not pairs or not by_seed:
        return None

    def hit(s: dict[str, float], p) -> float:
        return 1.0 if s[p.winner] > s[p.loser] else 0.5 if s[p.winner] == s[p.loser] else 0.0

    figs: dict[str, list[float]] = {}
    for p in pairs:
        mean_hit = sum(hit(s, p) for s in by_seed.values()) / len(by_seed)
        other_hit = sum(hit(s, p) for s in others.values()) / len(others)
        figs.setdefault(p.pair_id, []).append(mean_hit - other_hit)
    names = list(figs)
    rng = np.random.default_rng(seed)
    stats = [
        float(np.mean(np.concatenate([figs[names[i]] for i in rng.integers(0, len(names), len(names))])))
        for _ in range(n)
    ]
    per_seed = {
        str(k): round(float(np.mean([hit(s, p) - hit(others[k], p) for p in pairs])), 4)
        for k, s in by_seed.items()
    }
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return {
        "seeds": sorted(by_seed),
        "difference_by_seed": per_seed,
        "difference_mean": round(float(np.mean(np.concatenate(list(figs.values())))), 4),
        "ci95": [round(float(lo), 4), round(float(hi), 4)],
        "figures": len(names),
    }
