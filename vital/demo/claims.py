"""What a piece of text asserts about a figure, and how well that agrees with known findings.

Used by the offline judge (claims vs caption-stated facts) and the simulated clinician (claims vs
hidden truth). Claims are a dict with any of::

    lesion: bool            a lesion is / is not present
    side: "left" | "right" | "both"   (image halves; "both" when the text names both)
    count: int | "multiple"
    size: "small" | "large"
    modality: "x-ray" | "ct" | "mri" | "histology" | "gross" | "mixed"

Text style (hedging, leakage, truncation) is reported separately by :func:`style_flags`.
"""

from __future__ import annotations

import re
from collections import Counter

_NOUN = r"(?:lesions?|nodules?|masse?s?|opacit(?:y|ies)|tumou?rs?|nests?|foci|focus)"
_NEG = re.compile(
    rf"\b(?:no|without)\s+(?:[\w-]+\s+){{0,3}}?(?:{_NOUN}|abnormalit(?:y|ies))"
    r"|\bunremarkable\b|\bfree of (?:any )?lesions?\b|\b(?:is|are) not (?:seen|visible|identified)\b",
    re.IGNORECASE,
)
_COUNT = re.compile(
    rf"\b(a single|single|solitary|one|two|three|multiple|several|[1-9])\s+(?:[\w-]+\s+){{0,2}}?{_NOUN}\b",
    re.IGNORECASE,
)
_COUNT_WORDS: dict[str, int | str] = {
    "a single": 1, "single": 1, "solitary": 1, "one": 1, "two": 2, "three": 3,
    "multiple": "multiple", "several": "multiple",
}  # fmt: skip
_POSITIVE = re.compile(rf"\b{_NOUN}\b", re.IGNORECASE)
_SIDE = re.compile(r"\b(left|right)\b|\b(bilateral(?:ly)?|both sides)\b", re.IGNORECASE)
_SIZE = re.compile(r"\b(small|tiny|little|large|big|sizable)\b", re.IGNORECASE)
_SIZE_WORDS = {"small": "small", "tiny": "small", "little": "small", "large": "large", "big": "large",
               "sizable": "large"}  # fmt: skip
_MODALITY = {
    "x-ray": re.compile(r"x-ray|radiograph", re.IGNORECASE),
    "ct": re.compile(r"\bct\b|computed tomography", re.IGNORECASE),
    "mri": re.compile(r"\bmri\b|magnetic resonance|t2-weighted|\bflair\b", re.IGNORECASE),
    "histology": re.compile(r"histolog|micrograph|h&e|hematoxylin", re.IGNORECASE),
    "gross": re.compile(r"\bgross\b|macroscopic|resected specimen|surgical specimen", re.IGNORECASE),
}
_HEDGE = re.compile(
    r"\b(?:may|might|possibly|perhaps|unclear|uncertain|difficult to (?:determine|say|assess)"
    r"|cannot be (?:determined|assessed)|some (?:kind of )?abnormalit(?:y|ies)|hard to tell)\b",
    re.IGNORECASE,
)
_LEAK = re.compile(
    r"\b(?:caption|figure legend|legend|the text|the article|the authors|the paper|as described|as mentioned)\b",
    re.IGNORECASE,
)
_END = re.compile(r"[.!?)\]\"']\s*$")

FINDING_KEYS = ("lesion", "side", "count", "size", "modality")


def gpt_text(conversation: list[dict]) -> str:
    """The model side of a LLaVA conversation (what it asserts), joined."""
    return " ".join(t["value"] for t in conversation if t.get("from") == "gpt")


def _most_common(values: list) -> object:
    return Counter(values).most_common(1)[0][0]


def extract_claims(text: str) -> dict:
    """Findings asserted by ``text`` (see module docstring); absent keys are not asserted."""
    claims: dict = {}
    modalities = [m for m, pat in _MODALITY.items() if pat.search(text)]
    if modalities:
        claims["modality"] = modalities[0] if len(modalities) == 1 else "mixed"
    counts = [_COUNT_WORDS.get(m.group(1).lower()) or int(m.group(1)) for m in _COUNT.finditer(text)]
    sides = {("both" if m.group(2) else m.group(1).lower()) for m in _SIDE.finditer(text)}
    sizes = [_SIZE_WORDS[m.group(1).lower()] for m in _SIZE.finditer(text)]
    negated = bool(_NEG.search(text))
    if negated and not counts and not sides:
        claims["lesion"] = False
        return claims
    if counts or sides or _POSITIVE.search(text):
        claims["lesion"] = True
    if counts:
        exact = [c for c in counts if isinstance(c, int)]
        claims["count"] = _most_common(exact) if exact else "multiple"
    if sides:
        claims["side"] = sides.pop() if len(sides) == 1 else "both"
    if sizes and claims.get("lesion"):
        claims["size"] = _most_common(sizes)
    return claims


def _same(key: str, claimed, known) -> bool:
    if key == "count" and "multiple" in (claimed, known):
        other = known if claimed == "multiple" else claimed
        return other == "multiple" or (isinstance(other, int) and other >= 2)
    return claimed == known


def check_claims(claims: dict, findings: dict) -> tuple[int, int]:
    """(claims that agree, claims that could be checked) against ``findings`` (truth or caption facts)."""
    correct = checked = 0
    for key in FINDING_KEYS:
        if key not in claims:
            continue
        if key in ("side", "count", "size") and findings.get("lesion") is False:
            checked += 1  # asserting where/how many/how big when there is no lesion is a hallucination
            continue
        known = findings.get(key)
        if known is None or (key == "count" and known == 0 and findings.get("lesion") is not False):
            continue
        checked += 1
        correct += _same(key, claims[key], known)
    return correct, checked


def agreement(claims: dict, findings: dict) -> float:
    """Share of checkable claims that agree with ``findings``; 0.5 when nothing can be checked."""
    correct, checked = check_claims(claims, findings)
    return correct / checked if checked else 0.5


def style_flags(conversation: list[dict]) -> dict:
    """Hedges, leakage (answers that cite the caption/text instead of the image), truncation, terseness."""
    answers = [t["value"] for t in conversation if t.get("from") == "gpt"]
    text = " ".join(answers)
    words = [len(a.split()) for a in answers] or [0]
    return {
        "hedges": len(_HEDGE.findall(text)),
        "leaks": len(_LEAK.findall(text)),
        "truncated": bool(answers) and not _END.search(answers[-1]),
        "short": sum(words) / len(words) < 4,
        "rounds": len(answers),
    }
