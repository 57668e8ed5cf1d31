"""Judge-scored open visual chat (LLaVA-Med's protocol) on the generation engine.

A judge model sees the figure's caption and context, the question and two answers, and gives each a
1-10 score. Every pair is asked in both presentation orders and the two verdicts are averaged, which
cancels the judge's preference for whichever answer comes first.

- :func:`relative_scores`: model vs the reference answers (``gpt4_answer`` in LLaVA-Med's qa50 file):
  ``100 * mean(model score) / mean(reference score)``, overall and per domain and question type.
- :func:`win_rate`: model A vs model B on the same questions.

Requests go through ``send`` (e.g. ``vital.llm.runtime.LLMRuntime.send``): cached, rate limited,
retried. A verdict that cannot be parsed is counted and listed, never scored as zero.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vital.llm.engine import Outcome, Request, message_content
from vital.vqa.items import VQAItem

Send = Callable[[list[Request], str], list[Outcome]]

SYSTEM = "You are a careful assistant that checks the quality of answers about biomedical images."
INSTRUCTION = (
    "Two AI assistants answered the user's question about a biomedical image. You cannot see the image; "
    "its caption and the text that mentions it describe what it shows. Rate each answer for helpfulness, "
    "relevance, accuracy and level of detail with an overall score from 1 to 10 (higher is better). "
    "On the first line write only the two scores, for Assistant 1 and Assistant 2, separated by a space. "
    "Then explain your rating in a few sentences. Do not let the order of the answers affect your judgment."
)
_SCORES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[,\s]\s*(\d+(?:\.\d+)?)")


def pair_messages(item: VQAItem, first: str, second: str) -> list[dict]:
    caption = item.extra.get("fig_caption", "")
    label = item.extra.get("fig_label", "")
    mention = item.extra.get("in_text_mention", "")
    if isinstance(mention, list):
        mention = " ".join(m.get("tokens", "") if isinstance(m, dict) else str(m) for m in mention)
    context = (
        f"[Context]\nFigure caption:\n{label}: {caption}\n\nFigure context:\n{mention}\n\n"
        f"[Question]\n{item.question}\n\n"
        f"[Assistant 1]\n{first}\n[End of Assistant 1]\n\n"
        f"[Assistant 2]\n{second}\n[End of Assistant 2]\n\n"
        f"[System]\n{INSTRUCTION}"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": context}]


def parse_pair_scores(text: str) -> tuple[float, float] | None:
    """The two scores on the verdict's first line, or None when it has none in 0-10."""
    m = _SCORES.match(text.strip().splitlines()[0] if text.strip() else "")
    if m is None:
        return None
    a, b = float(m.group(1)), float(m.group(2))
    return (a, b) if 0 <= a <= 10 and 0 <= b <= 10 else None


@dataclass
class PairVerdicts:
    """Per question, the mean score of answer A and of answer B over both presentation orders."""

    a: dict[str, float] = field(default_factory=dict)
    b: dict[str, float] = field(default_factory=dict)
    first_won: int = 0
    second_won: int = 0
    failed: list[str] = field(default_factory=list)


def judge_pairs(
    items: Sequence[VQAItem],
    answers_a: Sequence[str],
    answers_b: Sequence[str],
    send: Send,
    model: str,
    max_tokens: int = 256,
    temperature: float = 0.0,
) -> PairVerdicts:
    """Score A against B on every item, in both orders (2 requests per question)."""
    if not len(items) == len(answers_a) == len(answers_b):
        raise ValueError(f"{len(items)} items, {len(answers_a)} answers A, {len(answers_b)} answers B")
    requests = []
    for item, a, b in zip(items, answers_a, answers_b, strict=True):
        for order, (first, second) in (("ab", (a, b)), ("ba", (b, a))):
            body = {
                "model": model,
                "messages": pair_messages(item, first, second),
                "temperature": temperature,
                "max_tokens": max_tokens,
            }
            requests.append(
                Request(body=body, est_tokens=max_tokens + len(str(body)) // 4, tag=(item, order))
            )
    out = PairVerdicts()
    collected: dict[str, list[tuple[float, float]]] = {}
    for outcome in send(requests, "judge pairs"):
        item, order = outcome.request.tag
        reason = outcome.error
        scores = None
        if outcome.ok:
            text, reason = message_content(outcome.response)
            scores = parse_pair_scores(text) if text else None
            reason = reason or (None if scores else "no_scores_on_first_line")
        if scores is None:
            out.failed.append(f"{item.question_id} ({order}): {reason}")
            continue
        first, second = scores
        out.first_won += first > second
        out.second_won += second > first
        a_score, b_score = (first, second) if order == "ab" else (second, first)
        collected.setdefault(item.question_id, []).append((a_score, b_score))
    for qid, pairs in collected.items():
        out.a[qid] = sum(p[0] for p in pairs) / len(pairs)
        out.b[qid] = sum(p[1] for p in pairs) / len(pairs)
    return out


def _relative(items: Sequence[VQAItem], v: PairVerdicts) -> dict[str, float | int]:
    scored = [i.question_id for i in items if i.question_id in v.a]
    ref = sum(v.b[q] for q in scored)
    out: dict[str, float | int] = {"n": len(scored)}
    if scored and ref > 0:
        out |= {
            "relative_score": 100 * sum(v.a[q] for q in scored) / ref,
            "model_score": sum(v.a[q] for q in scored) / len(scored),
            "reference_score": ref / len(scored),
        }
    return out


def relative_scores(
    items: Sequence[VQAItem], predictions: Sequence[str], send: Send, model: str, **kw
) -> dict:
    """LLaVA-Med's relative score of a model against the items' reference answers, with breakdowns."""
    v = judge_pairs(items, predictions, [i.answer for i in items], send, model, **kw)
    out: dict = {**_relative(items, v), "n_failed": len(v.failed), "failed": v.failed[:20]}
    out["position_bias_first_won"] = v.first_won
    out["position_bias_second_won"] = v.second_won
    for attr in ("domain", "question_type"):
        keys = sorted({getattr(i, attr) for i in items if getattr(i, attr) is not None})
        if keys:
            out[f"by_{attr}"] = {k: _relative([i for i in items if getattr(i, attr) == k], v) for k in keys}
    return out


def win_rate(
    items: Sequence[VQAItem], answers_a: Sequence[str], answers_b: Sequence[str], send: Send, model: str, **kw
) -> dict:
    """How often A's order-averaged judge score beats B's; ties count half in ``win_rate``."""
    v = judge_pairs(items, answers_a, answers_b, send, model, **kw)
    wins = sum(v.a[q] > v.b[q] for q in v.a)
    ties = sum(v.a[q] == v.b[q] for q in v.a)
    n = len(v.a)
    return {
        "n": n,
        "wins": wins,
        "ties": ties,
        "losses": n - wins - ties,
        **({"win_rate": (wins + 0.5 * ties) / n} if n else {}),
        "n_failed": len(v.failed),
        "failed": v.failed[:20],
        "position_bias_first_won": v.first_won,
        "position_bias_second_won": v.second_won,
    }
