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
