"""The texts the selector rates (whole candidate, one per round, the figure's own) and their CLIP features."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from vital.progress import progress
from vital.schema import Candidate, FigureRecord


def candidate_text(fig: FigureRecord, cand: Candidate, order: str = "paper", rounds: str = "all") -> str:
    """The text the selector rates: caption + in-text mention + each question and answer (``rounds="first"``:
    the first question and answer only, as BioMed-VITAL's selector reads a candidate).

    ``paper`` order is BioMed-VITAL's: ``caption + mention + "Question:" q + "Answer:" a``, tokenized with
    the backbone's tokenizer, which keeps the head and cuts the tail at the context length (256 tokens
    for BiomedCLIP). With a short context (the demo CLIP has 64) that can cut every answer, so that all
    candidates of a figure look the same; ``qa_first`` puts the conversation first, so the tail cut
    falls on the caption, which the candidates of one figure share anyway.
    """
    mention = " ".join(fig.in_text_mention)
    qa = []
    turns = cand.conversations
    for i in range(0, len(turns) - 1, 2):
        q = turns[i].value.replace("<image>", "").strip()
        qa.append(f"Question: {q} Answer: {turns[i + 1].value.strip()}")
    if rounds == "first":
        qa = qa[:1]
    context = f"{fig.fig_caption} {mention}".strip()
    parts = [*qa, context] if order == "qa_first" else [context, *qa]
    return " ".join(parts)


def round_texts(cand: Candidate) -> list[str]:
    """One text per Q&A round (``rounds`` mode): short enough that no answer is cut at a small context."""
    turns = cand.conversations
    return [
        f"Question: {turns[i].value.replace('<image>', '').strip()} Answer: {turns[i + 1].value.strip()}"
        for i in range(0, len(turns) - 1, 2)
    ]


def context_text(fig: FigureRecord) -> str:
    """The figure's own text (caption + in-text mentions), shared by its candidates."""
    return f"{fig.fig_caption} {' '.join(fig.in_text_mention)}".strip()


@torch.no_grad()
def encode_texts(
    model: torch.nn.Module, tokenizer: Callable, texts: list[str], batch_size: int, device: str
) -> tuple[np.ndarray, torch.Tensor]:
    """Text features and the token ids they came from (to count truncation)."""
    feats, tokens = [], []
    for i in progress(range(0, len(texts), batch_size), desc="embed texts"):
        tok = tokenizer(texts[i : i + batch_size])
        tokens.append(tok)
        feats.append(model.encode_text(tok.to(device)).float().cpu().numpy())
    return np.concatenate(feats), torch.cat(tokens)
