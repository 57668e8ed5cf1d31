"""Rounds mode (``embed.text_mode: rounds``): each Q&A round encoded alone, pooled per candidate, with its
agreement with the figure's image and caption and, with ``embed.side_features``, its laterality vector."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from vital.embed.text import context_text, encode_texts, round_texts
from vital.mirror import mirror_text
from vital.params import EmbedParams
from vital.schema import Candidate, FigureRecord


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-8)


def pool_rounds(feats: np.ndarray, owner: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and element-wise max of the L2-normalised round features of each of ``n`` candidates.

    The mean is left unnormalised: its length shrinks as the rounds say different things. The max keeps
    one odd round (a hedge, a wrong side) visible however many good rounds surround it.
    """
    unit = _unit(feats)
    mean = np.zeros((n, feats.shape[1]), dtype=np.float32)
    mx = np.full((n, feats.shape[1]), -np.inf, dtype=np.float32)
    count = np.bincount(owner, minlength=n).astype(np.float32)
    np.add.at(mean, owner, unit)
    np.maximum.at(mx, owner, unit)
    if (count == 0).any():
        raise ValueError(f"pool_rounds: {int((count == 0).sum())} candidates have no round")
    return mean / count[:, None], mx


def encode_rounds(
    model: torch.nn.Module,
    tokenizer: Callable,
    figures: dict[str, FigureRecord],
    fig_ids: list[str],
    fig_feats: np.ndarray,
    cands: list[Candidate],
    ep: EmbedParams,
    encode: Callable[..., tuple[np.ndarray, torch.Tensor]] = encode_texts,
    device: str | None = None,
) -> tuple[np.ndarray, torch.Tensor, list[str], dict[str, np.ndarray]]:
    """Rounds mode: pooled round features, the round tokens (for truncation stats, keyed by candidate so
    that 'identical texts' means identical conversations) and the extra arrays to save."""
    texts: list[str] = []
    owner: list[int] = []
    for k, c in enumerate(cands):
        rounds = round_texts(c)
        texts += rounds
        owner += [k] * len(rounds)
    device = device or ep.device
    feats, tokens = encode(model, tokenizer, texts, ep.batch_size, device)
    mean, mx = pool_rounds(feats, np.array(owner), len(cands))
    context, _ = encode(model, tokenizer, [context_text(figures[p]) for p in fig_ids], ep.batch_size, device)
    conv_tokens = _conversation_tokens(tokens, owner, len(cands))
    row = {pid: i for i, pid in enumerate(fig_ids)}
    sims = round_sims(feats, np.array(owner), len(cands), fig_feats, context, [row[c.pair_id] for c in cands])
    extra = {"candidate_text_max": mx, "figure_context": context, "candidate_round_sim": sims}
    if ep.side_features:
        mirrored, _ = encode(model, tokenizer, [mirror_text(t) for t in texts], ep.batch_size, device)
        extra["candidate_text_side"] = text_side(feats, mirrored, np.array(owner), len(cands))
    return mean, conv_tokens, [c.pair_id for c in cands], extra


def round_sims(
    feats: np.ndarray,
    owner: np.ndarray,
    n: int,
    image: np.ndarray,
    context: np.ndarray,
    figure_row: list[int],
) -> np.ndarray:
    """(n, 4) per candidate: min and mean over its rounds of each round's cosine with the figure's image
    and with its caption (CLIP's own agreement score; the min flags the one round that disagrees)."""
    rows = np.array(figure_row)[owner]
    r = _unit(feats)
    sims = np.stack([(r * _unit(image)[rows]).sum(1), (r * _unit(context)[rows]).sum(1)], 1).astype(
        np.float32
    )
    mins = np.full((n, 2), np.inf, dtype=np.float32)
    np.minimum.at(mins, owner, sims)
    sums = np.zeros((n, 2), dtype=np.float32)
    np.add.at(sums, owner, sims)
    means = sums / np.maximum(np.bincount(owner, minlength=n), 1)[:, None]
    return np.stack([mins[:, 0], means[:, 0], mins[:, 1], means[:, 1]], 1)


def text_side(feats: np.ndarray, mirrored: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """(n, D) per candidate: mean over its rounds of unit(round) - unit(round with left/right swapped).

    Exactly zero for a round that names no side, so the vector is what the text says about laterality
    and nothing else; the head pairs it with the image's side score."""
    diff = _unit(feats) - _unit(mirrored)
    out = np.zeros((n, feats.shape[1]), dtype=np.float32)
    np.add.at(out, owner, diff)
    return out / np.maximum(np.bincount(owner, minlength=n), 1)[:, None]


def _conversation_tokens(tokens: torch.Tensor, owner: list[int], n: int) -> torch.Tensor:
    """One row per candidate: its round token rows side by side (zero-padded), for ``text_stats``.

    A candidate counts as cut when any of its rounds filled the context."""
    per: list[list[torch.Tensor]] = [[] for _ in range(n)]
    for row, k in zip(tokens, owner, strict=True):
        per[k].append(row)
    width = max(len(p) for p in per) * tokens.shape[1]
    out = torch.zeros((n, width), dtype=tokens.dtype)
    cut = torch.zeros(n, dtype=torch.bool)
    for k, rows in enumerate(per):
        flat = torch.cat(rows)
        out[k, : len(flat)] = flat
        cut[k] = any(bool(r[-1] != 0) for r in rows)
    out[:, -1] = torch.where(cut, torch.ones_like(out[:, -1]), torch.zeros_like(out[:, -1]))
    return out
