"""Offline stand-in for the chat-evaluation judge: the ``heuristic`` answer judge.

A real judge model reads the question and two answers and rates each 1-10. This stand-in instead
compares each answer with the set's reference answer by token overlap after LLaVA-Med's answer
normalisation, so it is deterministic, free, and blind to presentation order: the same two answers
get the same two scores whichever is shown first. It rewards answers that contain the reference's
words, and penalises empty answers, answers much longer than the reference, and answers that share
no word with the question or the reference (off topic). It is a demo tool, not a judge of quality.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from vital.chat_eval import pair_answers
from vital.llm.engine import Outcome, Request
from vital.params import ChatEvalParams
from vital.paths import Paths
from vital.progress import progress
from vital.vqa.items import VQAItem
from vital.vqa.metrics import answer_tokens

MIN_SCORE, MAX_SCORE = 1.0, 10.0


@dataclass(frozen=True)
class AnswerScore:
    score: float
    recall: float
    precision: float
    notes: tuple[str, ...]

    def rationale(self) -> str:
        found = f"reference words found {self.recall:.0%}, on-topic words {self.precision:.0%}"
        return found + ("; " + ", ".join(self.notes) if self.notes else "")


class HeuristicAnswerJudge:
    """``score(question, reference, answer)`` -> 1..10; ``verdict`` writes a judge-style reply for two answers.

    ``overlong_ratio``: an answer with more than this many times the reference's tokens (and more
    than ``overlong_min`` tokens) loses ``overlong_penalty`` points per doubling beyond it.
    """

    name = "heuristic"

    def __init__(
        self,
        recall_weight: float = 0.7,
        overlong_ratio: float = 4.0,
        overlong_min: int = 12,
        overlong_penalty: float = 1.5,
        off_topic_penalty: float = 2.0,
    ) -> None:
        if not 0 <= recall_weight <= 1:
            raise ValueError(f"heuristic answer judge: recall_weight must be in [0, 1] (got {recall_weight})")
        if overlong_ratio < 1 or overlong_min < 1:
            raise ValueError("heuristic answer judge: overlong_ratio and overlong_min must be >= 1")
        self.recall_weight = recall_weight
        self.overlong_ratio = overlong_ratio
        self.overlong_min = overlong_min
        self.overlong_penalty = overlong_penalty
        self.off_topic_penalty = off_topic_penalty

    def score(self, question: str, reference: str, answer: str) -> AnswerScore:
        got = answer_tokens(answer)
        if not got:
            return AnswerScore(MIN_SCORE, 0.0, 0.0, ("empty answer",))
        ref = Counter(answer_tokens(reference))
        topic = set(ref) | set(answer_tokens(question))
        recall = sum(1 for w in ref if w in set(got)) / len(ref) if ref else 0.0
        precision = sum(1 for w in got if w in topic) / len(got)
        quality = self.recall_weight * recall + (1 - self.recall_weight) * precision
        score = MIN_SCORE + (MAX_SCORE - MIN_SCORE) * quality
        notes: list[str] = []
        limit = max(self.overlong_min, self.overlong_ratio * max(1, sum(ref.values())))
        if len(got) > limit:
            score -= self.overlong_penalty * (1 + int(math.log2(len(got) / limit)))
            notes.append(f"overlong ({len(got)} tokens)")
        if precision == 0:
            score -= self.off_topic_penalty
            notes.append("off topic")
        score = min(MAX_SCORE, max(MIN_SCORE, round(score, 1)))
        return AnswerScore(score, recall, precision, tuple(notes))

    def verdict(self, question: str, reference: str, first: str, second: str) -> str:
        """Both scores on the first line (the format of ``vital.vqa.judge``), then the reasons."""
        s1 = self.score(question, reference, first)
        s2 = self.score(question, reference, second)
        return (
            f"{s1.score:g} {s2.score:g}\n"
            f"Assistant 1: {s1.rationale()}.\nAssistant 2: {s2.rationale()}.\n"
            "(offline heuristic answer judge: token overlap with the reference answer)"
        )


def completion(text: str, model: str) -> dict:
    """A chat.completion response body carrying ``text`` (what the offline judge answers with)."""
    return {
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }


class HeuristicChatJudge:
    """Answers judge requests offline: reads the two answers from the prompt, the reference from the item."""

    def __init__(self, cp: ChatEvalParams, paths: Paths) -> None:
        self.model = cp.model
        self.judge = HeuristicAnswerJudge()
        self.verdicts = 0

    def preflight(self) -> None:
        pass

    def send(self, requests: list[Request], desc: str) -> list[Outcome]:
        out = []
        for req in progress(requests, desc=f"{desc} (heuristic)", total=len(requests)):
            item = req.tag[0] if isinstance(req.tag, tuple) else None
            if not isinstance(item, VQAItem):
                raise TypeError(f"heuristic chat judge: request tag {req.tag!r} carries no VQAItem")
            first, second = pair_answers(req.body["messages"])
            text = self.judge.verdict(item.question, item.answer, first, second)
            out.append(Outcome(req, completion(text, self.model)))
        self.verdicts += len(requests)
        return out

    def metrics(self) -> dict:
        return {
            "mode": "offline",
            "verdicts": self.verdicts,
            "requests_sent": 0,
            "cache_hits": 0,
            "input_tokens": 0,
            "output_tokens": 0,
            "estimated_cost_usd": 0.0,
        }
