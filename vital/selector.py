"""The selection model: an MLP rating head on CLIP features, trained on weighted preference pairs.

It distils judge scores (model pairs, weight 1) and clinician comparisons (human pairs, weight
``selector.human_weight``) into one unbounded rating. Features come from the embed stage, so a sweep over
this head's params never recomputes them; with ``selector.finetune_backbone`` the CLIP towers train with
the head instead (``vital.selector_backbone``).
"""

from __future__ import annotations

import csv
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from vital.embed import Embeddings, load_embeddings
from vital.io import RecordError, read_json, read_jsonl, write_json, write_jsonl
from vital.params import ParamsError, SelectorParams
from vital.paths import Paths
from vital.progress import progress
from vital.schema import Judgment, Pair, Preference

WEIGHTS = "head.safetensors"
CONFIG = "config.json"


# ---------------------------------------------------------------- model
def head_features(
    image: torch.Tensor,
    text: torch.Tensor,
    context: torch.Tensor | None = None,
    text_max: torch.Tensor | None = None,
    round_sim: torch.Tensor | None = None,
    text_side: torch.Tensor | None = None,
    image_side: torch.Tensor | None = None,
) -> torch.Tensor:
    """The head's input, built from CLIP features only.

    ``[img, txt, img*txt, |img-txt|]`` of the L2-normalised features: the products let a small head see
    image–text agreement (e.g. "left" in the answer, lesion on the right in the figure) as CLIP's own
    similarity does. With the embed stage's ``rounds`` features, ``text`` is the (unnormalised) mean of the
    normalised rounds and ``text_max`` / ``context`` (caption + mention) add ``[ctx, ctx*txt, |ctx-txt|,
    max, img*max, ctx*max]``: agreement with what the caption states, and the one odd round.
    """
    image = F.normalize(image, dim=-1)
    text = text if text_max is not None else F.normalize(text, dim=-1)
    if image.shape[-1] != text.shape[-1]:
        return torch.cat([image, text], dim=-1)
    parts = [image, text, image * text, (image - text).abs()]
    if context is not None:
        context = F.normalize(context, dim=-1)
        parts += [context, context * text, (context - text).abs()]
    if text_max is not None:
        parts += [text_max, image * text_max]
        if context is not None:
            parts.append(context * text_max)
    if round_sim is not None:
        parts.append(round_sim)
    if text_side is not None and image_side is not None:
        # the answer's side vector signed by the image's side: one linear direction then reads "the
        # answer names the side the image shows"
        parts += [text_side, image_side * text_side, image_side]
    return torch.cat(parts, dim=-1)


def embedding_features(emb: Embeddings) -> torch.Tensor:
    """``head_features`` of every candidate in ``emb`` (whichever text mode the embed stage used)."""

    def t(a: np.ndarray | None) -> torch.Tensor | None:
        return None if a is None else torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    return head_features(
        t(emb.image),
        t(emb.text),
        t(emb.context),
        t(emb.text_max),
        t(emb.round_sim),
        t(emb.text_side),
        t(emb.image_side),
    )


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


def pair_loss(diff: torch.Tensor, kind: str, margin: float) -> torch.Tensor:
    """Per-pair loss of rating differences r(winner) - r(loser)."""
    if kind == "hinge":
        return F.relu(margin - diff)
    return F.softplus(-diff)  # -log sigmoid(diff): Bradley–Terry


# ---------------------------------------------------------------- data
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


def read_pairs(path: Path, index: dict[str, int], problems: dict[str, list[str]]) -> dict[str, list[Pair]]:
    """Pairs by split; a pair naming a candidate without features is dropped and counted."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run the pairs stage first)")
    out: dict[str, list[Pair]] = defaultdict(list)
    for i, raw in enumerate(read_jsonl(path), 1):
        try:
            p = Pair.model_validate(raw)
        except ValidationError as e:
            problems.setdefault("invalid_pair", []).append(f"{path}:{i}: {e.errors()[0]['msg']}")
            continue
        missing = [c for c in (p.winner, p.loser) if c not in index]
        if missing:
            problems.setdefault("pair_without_features", []).append(f"{path}:{i}: {missing}")
            continue
        if p.winner == p.loser:
            problems.setdefault("pair_with_itself", []).append(f"{path}:{i}: {p.winner}")
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


# ---------------------------------------------------------------- training
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


@dataclass
class TrainResult:
    rater: torch.nn.Module
    curve: list[dict[str, float]]
    best_epoch: int
    stopped_early: bool

    @property
    def head(self) -> RatingHead:
        return self.rater.head


@torch.no_grad()
def rate_all(rater: torch.nn.Module, chunk: int = 512) -> torch.Tensor:
    """Ratings of every candidate, in eval mode, on the CPU."""
    was = rater.training
    rater.eval()
    out = torch.cat(
        [rater(torch.arange(i, min(i + chunk, len(rater)))).cpu() for i in range(0, len(rater), chunk)]
    )
    rater.train(was)
    return out


def weighted_agreement(scores: torch.Tensor, ps: PairSet) -> float:
    if len(ps) == 0 or float(ps.weight.sum()) == 0:
        return float("nan")
    d = scores[ps.winner] - scores[ps.loser]
    correct = (d > 0).float() + 0.5 * (d == 0).float()
    return float((correct * ps.weight).sum() / ps.weight.sum())


def new_rater(x: torch.Tensor, sp: SelectorParams, emb: Embeddings, paths: Paths) -> torch.nn.Module:
    """A fresh head on ``x``'s width, on the frozen features ``x`` or with the backbone end to end."""
    torch.manual_seed(sp.seed)
    head = RatingHead(x.shape[1], sp.hidden, sp.dropout)
    if sp.finetune_backbone == "none":
        return FrozenFeatureRater(head, x).to_device(sp.device)
    from vital.selector_backbone import build_rater  # loads open_clip: only when the backbone trains

    return build_rater(emb, head, sp, paths)


def train_rater(
    rater: torch.nn.Module, train: PairSet, val: PairSet, sp: SelectorParams, desc: str = "selector"
) -> TrainResult:
    """Pairwise training of ``rater`` (head, and backbone when it has trainable parameters) with early
    stopping on weighted validation agreement."""
    torch.manual_seed(sp.seed)
    gen = torch.Generator().manual_seed(sp.seed)
    backbone = rater.backbone_parameters()
    groups = [{"params": list(rater.head.parameters()), "lr": sp.lr}]
    if backbone:
        groups.append({"params": backbone, "lr": sp.backbone_lr})
    opt = torch.optim.AdamW(groups, weight_decay=sp.weight_decay)
    # Weighted mean over the whole training set, not per batch: each batch's sum of w*loss is divided by
    # (mean weight x batch size). The gradient scale is then independent of human_weight (400 human-pair
    # weight does not mean a 400x larger step), and batches that happen to hold more human pairs still
    # count more, so the expected batch gradient is the gradient of the full weighted objective.
    active = train.weight > 0
    train = train.subset(active.numpy())
    if len(train) == 0:
        raise RecordError("no training pair with positive weight (human_weight=0 and no model pairs?)")
    norm = float(train.weight.mean())
    best, best_state, best_epoch, bad, curve = -math.inf, None, 0, 0, []
    rater.train()
    for epoch in progress(range(1, sp.epochs + 1), desc=desc):
        perm = torch.randperm(len(train), generator=gen)
        total = 0.0
        for i in range(0, len(perm), sp.batch_size):
            b = perm[i : i + sp.batch_size]
            # one forward per distinct candidate: a backbone pass is the expensive part
            both = torch.cat([train.winner[b], train.loser[b]])
            uniq, inverse = torch.unique(both, return_inverse=True)
            r = rater(uniq).cpu()[inverse]
            d = r[: len(b)] - r[len(b) :]
            loss = (pair_loss(d, sp.loss, sp.margin) * train.weight[b]).sum() / (norm * len(b))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        scores = rate_all(rater)
        val_agree = weighted_agreement(scores, val) if len(val) else weighted_agreement(scores, train)
        curve.append(
            {"epoch": epoch, "train_loss": round(total / len(train), 5), "val_agreement": round(val_agree, 5)}
        )
        if val_agree > best + 1e-6:
            best, best_epoch, bad = val_agree, epoch, 0
            best_state = {k: v.detach().clone() for k, v in rater.state_dict().items()}
        else:
            bad += 1
            if bad >= sp.patience:
                break
    rater.load_state_dict(best_state)
    rater.eval()
    return TrainResult(rater, curve, best_epoch, stopped_early=len(curve) < sp.epochs)


# ---------------------------------------------------------------- evidence
def agreement(score: dict[str, float], pairs: list[Pair]) -> float | None:
    """Fraction of pairs the rater orders like the pair (ties count one half)."""
    if not pairs:
        return None
    hits = [
        1.0 if score[p.winner] > score[p.loser] else 0.5 if score[p.winner] == score[p.loser] else 0.0
        for p in pairs
    ]
    return float(np.mean(hits))


def pooled_auc(score: dict[str, float], pairs: list[Pair]) -> float | None:
    """AUC of winners' vs losers' scores pooled over all pairs (as BioMed-VITAL reports it)."""
    if not pairs:
        return None
    pos = np.array([score[p.winner] for p in pairs])
    neg = np.array([score[p.loser] for p in pairs])
    allv = np.concatenate([pos, neg])
    ranks = _average_ranks(allv)
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def _average_ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    sv = v[order]
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def kendall_tau(rater: list[float], truth_rank: list[int]) -> float:
    """Tau-b-free simple tau: (concordant - discordant) / pairs, rater ties count 0."""
    c = d = 0
    for i, j in combinations(range(len(rater)), 2):
        s = (rater[i] - rater[j]) * (truth_rank[j] - truth_rank[i])  # rank 0 = best
        c += s > 0
        d += s < 0
    n = len(rater) * (len(rater) - 1) / 2
    return (c - d) / n


def mean_kendall(score: dict[str, float], prefs: list[Preference]) -> dict[str, Any]:
    long = [p for p in prefs if len(p.ranking) > 2 and all(c in score for c in p.ranking)]
    if not long:
        return {"kendall_tau": None, "rankings": 0}
    taus = [kendall_tau([score[c] for c in p.ranking], list(range(len(p.ranking)))) for p in long]
    return {"kendall_tau": round(float(np.mean(taus)), 4), "rankings": len(long)}


def rater_report(score: dict[str, float], pairs: list[Pair], prefs: list[Preference]) -> dict[str, Any]:
    agr, auc = agreement(score, pairs), pooled_auc(score, pairs)
    return {
        "agreement": None if agr is None else round(agr, 4),
        "auc": None if auc is None else round(auc, 4),
        **mean_kendall(score, prefs),
    }


def random_rater(ids: list[str], pairs: list[Pair], seed: int, draws: int = 200) -> dict[str, Any]:
    """Agreement of random ratings: mean and spread over seeded draws (the noise floor of this eval set)."""
    if not pairs:
        return {"agreement": None, "agreement_std": None, "draws": 0}
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        s = dict(zip(ids, rng.random(len(ids)).tolist(), strict=True))
        values.append(agreement(s, pairs))
    return {
        "agreement": round(float(np.mean(values)), 4),
        "agreement_std": round(float(np.std(values)), 4),
        "draws": draws,
    }


def bootstrap_gap(
    a: dict[str, float], b: dict[str, float], pairs: list[Pair], seed: int, n: int = 1000
) -> dict[str, Any] | None:
    """Agreement(a) - agreement(b) with a 95% interval from resampling figures (pairs of a figure move together)."""
    if not pairs:
        return None
    by_fig: dict[str, list[Pair]] = defaultdict(list)
    for p in pairs:
        by_fig[p.pair_id].append(p)
    figs = list(by_fig)

    def hits(s: dict[str, float], ps: list[Pair]) -> np.ndarray:
        return np.array(
            [1.0 if s[p.winner] > s[p.loser] else 0.5 if s[p.winner] == s[p.loser] else 0.0 for p in ps]
        )

    diff = {f: hits(a, by_fig[f]) - hits(b, by_fig[f]) for f in figs}
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n):
        pick = rng.integers(0, len(figs), len(figs))
        vals = np.concatenate([diff[figs[i]] for i in pick])
        stats.append(vals.mean())
    point = float(np.concatenate(list(diff.values())).mean())
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return {
        "difference": round(point, 4),
        "ci95": [round(float(lo), 4), round(float(hi), 4)],
        "figures": len(figs),
    }


def clinician_agreement(prefs: list[Preference], figures: set[str] | None = None) -> dict[str, Any]:
    """How often two clinicians order the same two candidates alike (the ceiling for any rater)."""
    by_fig: dict[str, dict[str, list[str]]] = defaultdict(dict)
    for p in prefs:
        if figures is None or p.pair_id in figures:
            by_fig[p.pair_id][p.annotator] = p.ranking
    same = total = 0
    for rankings in by_fig.values():
        for ra, rb in combinations(rankings.values(), 2):
            pa, pb = {c: i for i, c in enumerate(ra)}, {c: i for i, c in enumerate(rb)}
            for x, y in combinations([c for c in ra if c in pb], 2):
                total += 1
                same += (pa[x] < pa[y]) == (pb[x] < pb[y])
    return {"agreement": round(same / total, 4) if total else None, "compared_pairs": total}


def read_scores_of_judge(path: Path) -> dict[str, float]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run the judge stage first)")
    out = {}
    for raw in read_jsonl(path):
        try:
            j = Judgment.model_validate(raw)
        except ValidationError:
            continue  # counted by the pairs stage, which reads the same file
        out.setdefault(j.candidate_id, j.score)
    return out


def read_prefs(path: Path) -> list[Preference]:
    if not path.is_file():
        return []
    prefs = []
    for raw in read_jsonl(path):
        try:
            prefs.append(Preference.model_validate(raw))
        except ValidationError:
            continue  # counted by the pairs stage
    return prefs


# ---------------------------------------------------------------- save / load / score
def save_selector(out: Path, head: RatingHead, config: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(out / WEIGHTS))
    write_json(out / CONFIG, config)


def load_selector(path: str | Path) -> tuple[RatingHead, dict[str, Any]]:
    path = Path(path)
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        raise FileNotFoundError(f"{path}: not a selector directory ({CONFIG} + {WEIGHTS})")
    cfg = read_json(path / CONFIG)
    head = RatingHead(cfg["in_dim"], cfg["hidden"], cfg["dropout"])
    head.load_state_dict(load_file(str(path / WEIGHTS)))
    head.eval()
    return head, cfg


@torch.no_grad()
def score_all(head: RatingHead, emb: Embeddings) -> np.ndarray:
    return head(embedding_features(emb)).numpy()


# ---------------------------------------------------------------- stage
def _evidence(
    selector: dict[str, float],
    judge: dict[str, float],
    ids: list[str],
    held: list[Pair],
    prefs: list[Preference],
    seed: int,
) -> dict[str, Any]:
    human = [p for p in held if p.source == "human"]
    model = [p for p in held if p.source == "model"]
    held_figs = {p.pair_id for p in human}
    held_prefs = [p for p in prefs if p.pair_id in held_figs]
    judged_human = [p for p in human if p.winner in judge and p.loser in judge]
    return {
        "heldout_human": {
            "pairs": len(human),
            "figures": len(held_figs),
            "selector": rater_report(selector, human, held_prefs),
            "judge": rater_report(judge, judged_human, held_prefs),
            "random": random_rater(ids, human, seed),
            "selector_minus_judge": bootstrap_gap(selector, judge, judged_human, seed),
            "clinician_vs_clinician": clinician_agreement(held_prefs),
        },
        "heldout_model": {
            "pairs": len(model),
            "figures": len({p.pair_id for p in model}),
            "selector": rater_report(selector, model, []),
            "judge": {"agreement": 1.0 if model else None, "note": "model pairs are made from judge scores"},
            "random": random_rater(ids, model, seed),
        },
        "clinician_vs_clinician_all": clinician_agreement(prefs),
    }


def best_weight(by_val: dict[float, tuple[float, float]]) -> float:
    """The weight whose head has the best (agreement, pooled AUC) on validation clinician pairs; the first
    listed among exact equals."""
    return max(by_val, key=by_val.__getitem__)


def _human_agreement(rater: torch.nn.Module, ids: list[str], held: list[Pair]) -> float | None:
    s = dict(zip(ids, rate_all(rater).tolist(), strict=True))
    return agreement(s, [p for p in held if p.source == "human"])


def check_device(device: str) -> None:
    """Fail on ``selector.device`` before any loading or training, naming the parameter."""
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ParamsError(f"selector.device={device!r}: not a torch device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParamsError(f"selector.device={device!r}: no CUDA device on this machine (use cpu)")


def run(sp: SelectorParams, paths: Paths) -> dict[str, Any]:
    """The select stage: ``models/selector``, ``artifacts/scores.jsonl``, ``metrics/select.json``, curve."""
    start = time.perf_counter()
    check_device(sp.device)
    emb = load_embeddings(paths.embeddings)
    index = emb.index()
    problems: dict[str, list[str]] = {}
    by_split = read_pairs(paths.pairs, index, problems)
    if not by_split.get("train"):
        raise RecordError(f"{paths.pairs}: no training pairs with features")
    x = embedding_features(emb)
    held = by_split.get("heldout", [])

    def build(w: float) -> torch.nn.Module:
        return new_rater(x, sp.model_copy(update={"human_weight": w}), emb, paths)

    def fit(w: float, desc: str = "selector") -> TrainResult:
        alt = sp.model_copy(update={"human_weight": w})
        train_w = to_pairset(by_split["train"], index, w)
        return train_rater(build(w), train_w, to_pairset(by_split.get("val", []), index, w), alt, desc=desc)

    auto: dict[str, Any] | None = None
    by_weight: dict[float, float | None] = {}  # held-out clinician agreement of a head per human weight
    weight0_scores: dict[str, float] | None = None
    best: TrainResult | None = None
    if sp.human_weight == "auto":
        val_human = [p for p in by_split.get("val", []) if p.source == "human"]
        if not val_human:
            raise RecordError(
                f"selector.human_weight=auto picks the weight on validation clinician pairs, and {paths.pairs} "
                "has none (give the labels stage more figures, or set a number)"
            )
        # Agreement first; its ties (a few hundred validation pairs tie often) go to the pooled AUC on the
        # same pairs, which also counts how far apart the head puts winners and losers; then to the first.
        by_val: dict[float, tuple[float, float]] = {}
        for w in dict.fromkeys(sp.auto_weights):  # one head at a time: with a backbone each is a model copy
            res = fit(w, desc=f"selector w={w:g}")
            head_scores = dict(zip(emb.candidate_ids, rate_all(res.rater).tolist(), strict=True))
            by_val[w] = (agreement(head_scores, val_human) or 0.0, pooled_auc(head_scores, val_human) or 0.0)
            by_weight[w] = agreement(head_scores, [p for p in held if p.source == "human"])
            if w == 0:
                weight0_scores = head_scores
            if best is None or by_val[w] > max(v for k, v in by_val.items() if k != w):
                best = res  # strictly better only: among equals the first of auto_weights wins
            del res
        chosen = best_weight(by_val)
        auto = {
            "chosen": chosen,
            "val_human_agreement_by_weight": {f"{w:g}": round(a, 4) for w, (a, _) in by_val.items()},
            "val_human_auc_by_weight": {f"{w:g}": round(u, 4) for w, (_, u) in by_val.items()},
        }
        sp = sp.model_copy(update={"human_weight": chosen})
    train = to_pairset(by_split["train"], index, sp.human_weight)
    val = to_pairset(by_split.get("val", []), index, sp.human_weight)
    result = best or fit(sp.human_weight)
    scores = rate_all(result.rater).numpy()
    selector_scores = dict(zip(emb.candidate_ids, scores.tolist(), strict=True))
    judge = read_scores_of_judge(paths.judgments)
    prefs = read_prefs(paths.labels)

    # the same head at other human weights, on the same features and pairs: agreement vs weight in one run
    by_weight[sp.human_weight] = _human_agreement(result.rater, emb.candidate_ids, held)
    for w in sp.compare_weights:
        if w in by_weight:
            continue
        res = fit(w, desc=f"selector w={w:g}")
        by_weight[w] = _human_agreement(res.rater, emb.candidate_ids, held)
        if w == 0:
            weight0_scores = dict(zip(emb.candidate_ids, rate_all(res.rater).tolist(), strict=True))
    if sp.human_weight == 0:
        weight0_scores = None  # the selector itself: no gap to report

    config = {
        "in_dim": int(x.shape[1]),
        "hidden": sp.hidden,
        "dropout": sp.dropout,
        "features": _feature_names(emb),
        "backbone": emb.meta.get("backbone"),
        "backbone_pretrained": emb.meta.get("pretrained"),
        "embeddings_fingerprint": emb.meta.get("fingerprint"),
        "params": sp.model_dump(),
        "best_epoch": result.best_epoch,
    }
    save_selector(paths.selector, result.head, config)
    if sp.finetune_backbone != "none":
        from vital.selector_backbone import save_backbone

        config.update(save_backbone(paths.selector, result.rater))
        write_json(paths.selector / CONFIG, config)
    write_jsonl(
        paths.scores,
        (
            {"candidate_id": c, "pair_id": p, "score": round(float(s), 6)}
            for c, p, s in zip(emb.candidate_ids, emb.pair_ids, scores, strict=True)
        ),
    )
    _write_curve(paths.plots / "select_curve.csv", result.curve)
    _write_weights(paths.plots / "select_weights.csv", by_weight)
    metrics = {
        "human_weight": sp.human_weight,
        **({"human_weight_auto": auto} if auto else {}),
        "loss": sp.loss,
        "finetune_backbone": sp.finetune_backbone,
        "pairs_train": {"human": train.source.count("human"), "model": train.source.count("model")},
        "pairs_val": len(val),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.curve),
        "stopped_early": result.stopped_early,
        "final_train_loss": result.curve[-1]["train_loss"],
        "best_val_agreement": max(c["val_agreement"] for c in result.curve),
        **_evidence(selector_scores, judge, emb.candidate_ids, held, prefs, sp.seed),
        "heldout_human_agreement_by_weight": {
            f"{w:g}": (None if a is None else round(a, 4)) for w, a in sorted(by_weight.items())
        },
        "candidates_scored": len(scores),
        "dropped": {k: len(v) for k, v in problems.items()},
        "dropped_examples": {k: v[:50] for k, v in problems.items()},
        "wall_seconds": round(time.perf_counter() - start, 2),
    }
    if weight0_scores is not None:
        human_held = [p for p in held if p.source == "human"]
        metrics["heldout_human"]["selector_minus_weight0"] = bootstrap_gap(
            selector_scores, weight0_scores, human_held, sp.seed
        )
    write_json(paths.metric("select"), metrics)
    from vital.lineage import log_stage  # MLflow run + registered `vital-select` (in a pipeline repo)

    log_stage(
        "select",
        sp.model_dump(),
        metrics,
        {
            "embeddings": paths.embeddings,
            "pairs": paths.pairs,
            "judgments": paths.judgments,
            "labels": paths.labels,
        },
        paths.selector,
        paths.root,
    )
    return metrics


def _feature_names(emb: Embeddings) -> str:
    names = ["img", "txt", "img*txt", "|img-txt|"]
    if emb.context is not None:
        names += ["ctx", "ctx*txt", "|ctx-txt|"]
    if emb.text_max is not None:
        names += ["max", "img*max"] + (["ctx*max"] if emb.context is not None else [])
    if emb.round_sim is not None:
        names += ["min/mean cos(round, img)", "min/mean cos(round, ctx)"]
    if emb.text_side is not None and emb.image_side is not None:
        names += ["txt_side", "img_side*txt_side", "img_side"]
    return f"concat({', '.join(names)}) of l2-normalised CLIP features (text mode: {emb.meta.get('text_mode', 'joint')})"


def _write_curve(path: Path, curve: list[dict[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["epoch", "train_loss", "val_agreement"])
        w.writeheader()
        w.writerows(curve)


def _write_weights(path: Path, by_weight: dict[float, float | None]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["human_weight", "heldout_human_agreement"])
        w.writerows((f"{k:g}", "" if v is None else round(v, 4)) for k, v in sorted(by_weight.items()))
