"""Accurate LLaVA-style Q&A about a figure's findings (the clinician's way of putting it).

Used for the demonstrations in ``data/demonstrations`` and, fed with deliberately corrupted findings,
by the template generator. Every answer is a full sentence that restates what it asserts, the way a
good instruction-tuning answer does.
"""

from __future__ import annotations

import numpy as np

from vital.world.findings import STYLES
from vital.world.language import be, findings_sentence, lesion_np, pronoun, side_phrase

QUESTIONS: dict[str, tuple[str, ...]] = {
    "modality": (
        "What imaging modality is used in this image?",
        "What type of image is this?",
        "Can you identify the imaging technique shown?",
    ),
    "findings": (
        "What are the key findings in this image?",
        "Is there any abnormality visible?",
        "Are there any lesions present?",
    ),
    "side": (
        "Where is the lesion located?",
        "On which side of the image is the abnormality?",
        "Is the lesion in the left half of the image?",
        "Is the lesion in the right half of the image?",
    ),
    "count": ("How many lesions can you see?", "Is there more than one lesion?"),
    "size": ("How large does the lesion appear?", "Would you describe the lesion as small or large?"),
    "describe": ("Describe the image in detail.", "What can you observe in this figure?"),
}
LESION_ONLY = frozenset({"side", "count", "size"})


def with_article(phrase: str) -> str:
    vowel_sound = phrase[0].lower() in "aeiou" or phrase.startswith("H&E")
    return f"{'an' if vowel_sound else 'a'} {phrase}"


def answer(kind: str, truth: dict) -> str:
    style = STYLES[truth["domain"]]
    n = truth["count"]
    if kind == "modality":
        return f"This is {with_article(style.modality_long)}."
    if kind == "findings":
        if not truth["lesion"]:
            return f"There is no visible lesion. {findings_sentence(truth)}"
        return findings_sentence(truth)
    if kind == "side":
        return f"The {style.noun if n == 1 else style.plural} {be(n)} located {side_phrase(truth['side'])}."
    if kind == "count":
        return f"There {be(n)} {lesion_np(truth, with_size=False)} {side_phrase(truth['side'])}."
    if kind == "size":
        return f"The {style.noun if n == 1 else style.plural} {be(n)} {truth['size']} relative to the {style.region}."
    if kind == "describe":
        body = findings_sentence(truth)
        extra = (
            f" {pronoun(n).capitalize()} stand{'s' if n == 1 else ''} out clearly against the surrounding tissue."
            if truth["lesion"]
            else ""
        )
        return f"The image is {with_article(style.modality_long)}. {body}{extra}"
    raise ValueError(f"unknown question kind {kind!r}")


def yes_no(question: str, kind: str, truth: dict) -> str | None:
    """The right "Yes"/"No" for a yes/no question, or None for an open question."""
    if not question.startswith(("Is ", "Are ")):
        return None
    if kind == "findings":
        return "Yes" if truth["lesion"] else "No"
    if kind == "count":
        return "Yes" if truth["count"] > 1 else "No"
    if kind == "side":
        return "Yes" if f" {truth['side']} " in question else "No"
    raise ValueError(f"no yes/no rule for {kind!r} question {question!r}")


def question_kinds(truth: dict, rounds: int, rng: np.random.Generator, first: str | None = None) -> list[str]:
    pool = [k for k in QUESTIONS if truth["lesion"] or k not in LESION_ONLY]
    if first is not None:
        pool.remove(first)
    order = [pool[i] for i in rng.permutation(len(pool))]
    kinds = ([first] if first else []) + order
    return kinds[: max(1, min(rounds, len(kinds)))]


def write_conversation(truth: dict, kinds: list[str], rng: np.random.Generator) -> list[dict]:
    turns: list[dict] = []
    for i, kind in enumerate(kinds):
        q = QUESTIONS[kind][int(rng.integers(len(QUESTIONS[kind])))]
        turns.append({"from": "human", "value": f"<image>\n{q}" if i == 0 else q})
        reply = answer(kind, truth)
        verdict = yes_no(q, kind, truth)  # a yes/no question is answered yes or no first, then explained
        turns.append({"from": "gpt", "value": f"{verdict}. {reply}" if verdict else reply})
    return turns
