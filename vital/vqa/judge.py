"""Judge-scored open visual chat (LLaVA-Med's protocol) on the generation engine.

A judge model sees the figure's caption and context, the question and two answers, and gives each a
1-10 score. Every pair is asked in both presentation orders and the two verdicts are averaged, which
cancels the judge's preference for whichever answer comes first.

- :func:`relative_scores`: model vs the reference answers (``gpt4_answer`` in LLaVA-Med's qa50 file):
  ``ratio_of_sums`` = ``100 * mean(model score) / mean(reference score)`` (vital's: a question the judge
  scores low for both answers cannot swing it) and ``mean_of_ratios`` = the mean over questions of
  ``100 * model / reference`` (LLaVA-Med's ``summarize_gpt_review.py``), overall and per domain and type.
- :func:`win_rate`: model A vs model B on the same questions, with the scores protocol above or
  (``protocol="paper"``) BioMed-VITAL's: the judge sees the image, the question, the ground truth and both
  answers and names the better one, ``[[A]]``, ``[[B]]`` or ``[[C]]`` for a tie (``eval/win_rate.py``).

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

# BioMed-VITAL's win-rate protocol, in vital's words: the structure and criteria of eval/win_rate.py
VERDICT_SYSTEM = (
    "You are an impartial judge of two AI assistants' answers to a question about a biomedical image. "
    "Judge correctness and helpfulness. You are given the image, the question, a ground-truth answer and "
    "the answers of assistant A and assistant B. Compare each answer with the ground truth and note its "
    "mistakes. The order in which the answers appear, their length and the assistants' names must not "
    "sway you. Start your reply with your verdict: [[A]] if A's answer is better, [[B]] if B's is better, "
    "[[C]] only if you cannot tell them apart. Then explain it briefly."
)
_VERDICT = re.compile(r"\[\[([ABC])\]\]")
_VERDICT_SCORES = {"A": (1.0, 0.0), "B": (0.0, 1.0), "C": (0.5, 0.5)}


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


def verdict_messages(item: VQAItem, first: str, second: str, image_url: str | None = None) -> list[dict]:
    """``protocol="paper"``: question, ground truth and both answers, with the image when given."""
    text = (
        f"[Question]\n{item.question}\n\n[Ground Truth]\n{item.answer}\n\n"
        f"[Assistant A]\n{first}\n[End of Assistant A]\n\n"
        f"[Assistant B]\n{second}\n[End of Assistant B]"
    )
    content: str | list[dict] = text
    if image_url is not None:
        content = [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": text}]
    return [{"role": "system", "content": VERDICT_SYSTEM}, {"role": "user", "content": content}]


def parse_verdict(text: str) -> tuple[float, float] | None:
    """The first [[A]]/[[B]]/[[C]] as scores in the first/second answer's terms: (1, 0), (0, 1), (.5, .5)."""
    m = _VERDICT.search(text)
    return None if m is None else _VERDICT_SCORES[m.group(1)]


# protocol -> (parser, the failure reason of an unparseable reply)
PARSERS: dict[str, tuple[Callable[[str], tuple[float, float] | None], str]] = {}


def parse_pair_scores(text: str) -> tuple[float, float] | None:
    """The two scores on the verdict's first line, or None when it has none in 0-10."""
    m = _SCORES.match(text.strip().splitlines()[0] if text.strip() else "")
    if m is None:
        return None
    a, b = float(m.group(1)), float(m.group(2))
    return (a, b) if 0 <= a <= 10 and 0 <= b <= 10 else None


PARSERS.update(scores=(parse_pair_scores, "no_scores_on_first_line"), paper=(parse_verdict, "no_verdict"))


def parse_reply(text: str | None, protocol: str) -> tuple[tuple[float, float] | None, str | None]:
    """(scores, None) or (None, the reason none could be read) for one judge reply."""
    parse, reason = PARSERS[protocol]
    scores = parse(text) if text else None
    return scores, None if scores else reason


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
    protocol: str = "scores",
    image_of: Callable[[VQAItem], str] | None = None,
) -> PairVerdicts:
    """Score A against B on every item, in both orders (2 requests per question); ``protocol="paper"``
    asks for a verdict against the ground truth, with ``image_of(item)`` (a data URL) when given."""
    if not len(items) == len(answers_a) == len(answers_b):
        raise ValueError(f"{len(items)} items, {len(answers_a)} answers A, {len(answers_b)} answers B")
    requests = []
    for item, a, b in zip(items, answers_a, answers_b, strict=True):
        for order, (first, second) in (("ab", (a, b)), ("ba", (b, a))):
            body = {
                "model": model,
                "messages": (
                    pair_messages(item, first, second)
                    if protocol == "scores"
                    else verdict_messages(item, first, second, image_of(item) if image_of else None)
                ),
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
            scores, unread = parse_reply(text, protocol)
            reason = reason or unread
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


def _relative(items: Sequence[VQAItem], v: PairVerdicts, definition: str) -> dict[str, float | int]:
    scored = [i.question_id for i in items if i.question_id in v.a]
    ref = sum(v.b[q] for q in scored)
    out: dict[str, float | int] = {"n": len(scored)}
    if scored and ref > 0:
        ratios = [100 * v.a[q] / v.b[q] for q in scored if v.b[q] > 0]
        out |= {
            "ratio_of_sums": 100 * sum(v.a[q] for q in scored) / ref,
            # LLaVA-Med divides by every reference score; one scored 0 has no ratio and is left out
            "mean_of_ratios": sum(ratios) / len(ratios),
            "n_reference_scored_zero": len(scored) - len(ratios),
            "model_score": sum(v.a[q] for q in scored) / len(scored),
            "reference_score": ref / len(scored),
        }
        out = {"relative_score": out[definition], **out}
    return out


def relative_scores(
    items: Sequence[VQAItem],
    predictions: Sequence[str],
    send: Send,
    model: str,
    definition: str = "ratio_of_sums",
    **kw,
) -> dict:
    """The relative score of a model against the items' reference answers (``definition``: ratio_of_sums or
    LLaVA-Med's mean_of_ratios; both are returned), with breakdowns."""
    v = judge_pairs(items, predictions, [i.answer for i in items], send, model, **kw)
    out: dict = {**_relative(items, v, definition), "n_failed": len(v.failed), "failed": v.failed[:20]}
    out["position_bias_first_won"] = v.first_won
    out["position_bias_second_won"] = v.second_won
    for attr in ("domain", "question_type"):
        keys = sorted({getattr(i, attr) for i in items if getattr(i, attr) is not None})
        if keys:
            out[f"by_{attr}"] = {
                k: _relative([i for i in items if getattr(i, attr) == k], v, definition) for k in keys
            }
    return out


def win_rate(
    items: Sequence[VQAItem], answers_a: Sequence[str], answers_b: Sequence[str], send: Send, model: str, **kw
) -> dict:
    """How often A's order-averaged judge score (or verdict, ``protocol="paper"``) beats B's; ties count
    half in ``win_rate``."""
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
