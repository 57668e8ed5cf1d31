"""Instruction-following difficulty (IFD; Li et al. 2023, Superfiltering 2024) under the base LLaVA's LLM.

For every Q&A round: ``IFD = loss(answer | question) / loss(answer)``, the answer tokens' mean
cross-entropy under the base model's language model with and without the question before it. A candidate's
IFD is the mean over its rounds. High IFD = the question helps little = hard, informative data; as in
Superfiltering, IFD >= 1 (the question makes the answer *less* likely: a mismatch) is ranked last.

It is text only (the image is not shown, as Superfiltering scores with a small text LM): on the demo
base a forward pass of 4,363 candidates takes seconds; with a 13B base it needs a GPU.
"""

from __future__ import annotations

import torch

from vital.params import BakeoffParams
from vital.schema import Candidate


def rounds(c: Candidate) -> list[tuple[str, str]]:
    """(question, answer) per round, the ``<image>`` placeholder removed."""
    turns = c.conversations
    return [
        (turns[i].value.replace("<image>", "").strip(), turns[i + 1].value.strip())
        for i in range(0, len(turns) - 1, 2)
        if turns[i].from_ == "human" and turns[i + 1].from_ == "gpt"
    ]


def load_lm(model: str):
    """(causal LM, tokenizer) of a LLaVA checkpoint (its language model and head), or of a plain causal LM."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlavaForConditionalGeneration

    if AutoConfig.from_pretrained(model).model_type == "llava":
        lm = LlavaForConditionalGeneration.from_pretrained(model, dtype=torch.float32)
    else:
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return lm.eval(), tok


@torch.no_grad()
def answer_losses(lm, tok, pairs: list[tuple[str, str]], max_length: int, batch_size: int) -> list[float]:
    """Mean cross-entropy of each answer's tokens after its prefix (``""`` = the answer alone)."""
    out: list[float] = []
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        ids, labels = [], []
        for prefix, answer in batch:
            p = tok(prefix + "\n", add_special_tokens=False)["input_ids"] if prefix else []
            a = tok(" " + answer, add_special_tokens=False)["input_ids"]
            bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
            seq = (bos + p + a)[:max_length]
            lab = ([-100] * (len(bos) + len(p)) + a)[:max_length]
            if all(x == -100 for x in lab[1:]):  # question filled the window: keep the answer's tail
                seq, lab = (bos + p + a)[-max_length:], ([-100] * (len(bos) + len(p)) + a)[-max_length:]
            ids.append(seq)
            labels.append(lab)
        width = max(len(s) for s in ids)
        pad = tok.pad_token_id
        input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in ids])
        attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in ids])
        lab = torch.tensor([s + [-100] * (width - len(s)) for s in labels])
        logits = lm(input_ids=input_ids, attention_mask=attn).logits[:, :-1].float()
        target = lab[:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="none"
        ).view(target.shape)
        mask = (target != -100).float()
        out.extend((nll.sum(1) / mask.sum(1).clamp(min=1)).tolist())
    return out


def ifd_scores(candidates: list[Candidate], bp: BakeoffParams) -> dict[str, float]:
    lm, tok = load_lm(bp.ifd_model)
    owners, cond, plain = [], [], []
    for c in candidates:
        for q, a in rounds(c):
            owners.append(c.id)
            cond.append((q, a))
            plain.append(("", a))
    with_q = answer_losses(lm, tok, cond, bp.ifd_max_length, bp.ifd_batch_size)
    alone = answer_losses(lm, tok, plain, bp.ifd_max_length, bp.ifd_batch_size)
    per: dict[str, list[float]] = {}
    for cid, lq, la in zip(owners, with_q, alone, strict=True):
        per.setdefault(cid, []).append(lq / max(la, 1e-6))
    scores = {}
    for c in candidates:
        ifd = sum(per[c.id]) / len(per[c.id]) if c.id in per else 1.0
        scores[c.id] = ifd if ifd < 1 else -ifd  # IFD >= 1: the question does not help; ranked last
    return scores
