"""Accurate LLaVA-style Q&A about a figure's findings (the clinician's way of putting it).

Used for the demonstrations in ``data/demonstrations`` and, fed with deliberately corrupted findings,
by the template generator. Every answer is a full sentence that restates what it asserts, the way a
good instruction-tuning answer does.
"""

from __future__ import annotations

import numpy as np

from vital.world.findings import STYLES
from vital.world.language import be, findings_sentence, lesion_np, pronoun, side_phrase

# Several wordings per kind, as GPT-written instruction data has: with two to four, whether the demo's 2-layer
# LLM answered the VQA set's own wordings ("What imaging modality is this?") depended on the tune's seed
# (docs/tuning.md, "Making the instrument see"). Of the VQA set's wordings only "Is there more than one
# lesion?" is here verbatim.
QUESTIONS: dict[str, tuple[str, ...]] = {
    "modality": (
        "What imaging modality is used in this image?",
        "What type of image is this?",
        "Can you identify the imaging technique shown?",
        "Is this image {modality}?",
        "Which imaging modality does this figure show?",
        "What kind of scan or image is shown here?",
        "How was this image acquired?",
        "Name the imaging modality of this figure.",
        "Is this figure {modality}?",
    ),
    "findings": (
        "What are the key findings in this image?",
        "Is there any abnormality visible?",
        "Are there any lesions present?",
        "Does the image appear normal?",
        "Is anything abnormal in this image?",
        "Is a lesion visible in this figure?",
        "Is this figure free of lesions?",
        "What abnormality, if any, does the image show?",
    ),
    "side": (
        "Where is the lesion located?",
        "On which side of the image is the abnormality?",
        "Is the lesion in the {side} half of the image?",
        "Does the abnormality lie on the {side} side of the image?",
        "In which half of the image is the lesion?",
        "Where in the image is the abnormality?",
        "Is the abnormality on the {side} of the image?",
    ),
    "count": (
        "How many lesions can you see?",
        "Is there more than one lesion?",
        "Is there only one lesion?",
        "How many lesions are visible?",
        "What is the number of lesions?",
        "Are there several lesions?",
    ),
    "size": (
        "How large does the lesion appear?",
        "Would you describe the lesion as small or large?",
        "How big is the lesion?",
        "Does the lesion look small or large?",
    ),
    "describe": (
        "Describe the image in detail.",
        "What can you observe in this figure?",
        "Please describe this figure.",
        "Give a detailed description of the image.",
    ),
}
# the truth of each yes/no question, given the figure's findings and the value put in its slot
YES_NO: dict[str, object] = {
    "Is this image {modality}?": lambda t, slot: slot == t["modality"],
    "Is this figure {modality}?": lambda t, slot: slot == t["modality"],
    "Is there any abnormality visible?": lambda t, slot: t["lesion"],
    "Are there any lesions present?": lambda t, slot: t["lesion"],
    "Does the image appear normal?": lambda t, slot: not t["lesion"],
    "Is anything abnormal in this image?": lambda t, slot: t["lesion"],
    "Is a lesion visible in this figure?": lambda t, slot: t["lesion"],
    "Is this figure free of lesions?": lambda t, slot: not t["lesion"],
    "Is the lesion in the {side} half of the image?": lambda t, slot: slot == t["side"],
    "Does the abnormality lie on the {side} side of the image?": lambda t, slot: slot == t["side"],
    "Is the abnormality on the {side} of the image?": lambda t, slot: slot == t["side"],
    "Is there more than one lesion?": lambda t, slot: t["count"] > 1,
    "Is there only one lesion?": lambda t, slot: t["count"] == 1,
    "Are there several lesions?": lambda t, slot: t["count"] > 1,
}
MODALITY_ASKED = {
    "x-ray": "an X-ray",
    "ct": "a CT scan",
    "mri": "an MRI scan",
    "histology": "a histology section",
    "gross": "a photograph of a gross specimen",
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


def fill(template: str, truth: dict, rng: np.random.Generator) -> tuple[str, str | None]:
    """The question text with its slot filled (half the time with the true value), and the slot value."""
    if "{side}" in template:
        slot = ("left", "right")[int(rng.integers(2))]
        return template.format(side=slot), slot
    if "{modality}" in template:
        others = sorted(m for m in MODALITY_ASKED if m != truth["modality"])
        slot = truth["modality"] if rng.random() < 0.5 else others[int(rng.integers(len(others)))]
        return template.format(modality=MODALITY_ASKED[slot]), slot
    return template, None


def question_kinds(truth: dict, rounds: int, rng: np.random.Generator, first: str | None = None) -> list[str]:
    pool = [k for k in QUESTIONS if truth["lesion"] or k not in LESION_ONLY]
    if first is not None:
        pool.remove(first)
    order = [pool[i] for i in rng.permutation(len(pool))]
    kinds = ([first] if first else []) + order
    return kinds[: max(1, min(rounds, len(kinds)))]


def question_plan(
    truth: dict, rounds: int, rng: np.random.Generator, first: str | None = None
) -> list[tuple[str, str]]:
    """``rounds`` distinct questions as (kind, template): each kind once (in a random order, ``first``
    leading) before any kind is asked again in other words, as long conversations do."""
    kinds = question_kinds(truth, len(QUESTIONS), rng, first)
    unused = {k: [QUESTIONS[k][i] for i in rng.permutation(len(QUESTIONS[k]))] for k in kinds}
    plan: list[tuple[str, str]] = []
    while len(plan) < rounds and any(unused.values()):
        for kind in kinds:
            if unused[kind] and len(plan) < rounds:
                plan.append((kind, unused[kind].pop()))
    return plan


def _round(truth: dict, kind: str, template: str, rng: np.random.Generator, first: bool) -> list[dict]:
    q, slot = fill(template, truth, rng)
    reply = answer(kind, truth)
    if template in YES_NO:  # answered yes or no first, then explained, as vision LLMs do
        reply = f"{'Yes' if YES_NO[template](truth, slot) else 'No'}. {reply}"
    return [{"from": "human", "value": f"<image>\n{q}" if first else q}, {"from": "gpt", "value": reply}]


def write_conversation(truth: dict, kinds: list[str], rng: np.random.Generator) -> list[dict]:
    turns: list[dict] = []
    for i, kind in enumerate(kinds):
        template = QUESTIONS[kind][int(rng.integers(len(QUESTIONS[kind])))]
        turns += _round(truth, kind, template, rng, first=i == 0)
    return turns


def write_planned(truth: dict, plan: list[tuple[str, str]], rng: np.random.Generator) -> list[dict]:
    turns: list[dict] = []
    for i, (kind, template) in enumerate(plan):
        turns += _round(truth, kind, template, rng, first=i == 0)
    return turns
