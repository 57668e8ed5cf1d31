"""How the demo world talks about findings: phrases shared by captions, demonstrations and generators.

Every phrase states the side as a half of the image ("in the left half of the image"), following the
convention in :mod:`vital.world.findings`.
"""

from __future__ import annotations

from vital.world.findings import STYLES

COUNT_WORDS = {1: "a single", 2: "two", 3: "three"}


def lesion_np(truth: dict, with_size: bool = True, count_word: str | None = None) -> str:
    """'two small hypodense lesions' / 'a single large nodule'."""
    style = STYLES[truth["domain"]]
    count = truth["count"]
    noun = style.noun if count == 1 else style.plural
    size = f"{truth['size']} " if with_size and truth.get("size") else ""
    return f"{count_word or COUNT_WORDS[count]} {size}{noun}"


def side_phrase(side: str) -> str:
    return f"in the {side} half of the image"


def be(count: int) -> str:
    return "is" if count == 1 else "are"


def pronoun(count: int) -> str:
    return "it" if count == 1 else "they"


def findings_sentence(truth: dict) -> str:
    """One accurate sentence stating every finding."""
    style = STYLES[truth["domain"]]
    if not truth["lesion"]:
        return f"No focal lesion is seen; the {style.region} is unremarkable."
    n = truth["count"]
    return f"There {be(n)} {lesion_np(truth)} {side_phrase(truth['side'])}."


def lower_first(text: str) -> str:
    """'Brain MRI' -> 'brain MRI', but 'H&E-stained' and 'CT scan' keep their capitals."""
    if len(text) > 1 and (text[1].isupper() or not text[1].isalpha()):
        return text
    return text[0].lower() + text[1:]
