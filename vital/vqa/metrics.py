"""Biomedical VQA metrics with LLaVA-Med's definitions, plus corrected closed-set and exact-match figures.

Definitions (all on answers normalised by :func:`normalize_answer`):

- ``open_recall`` / ``open_precision`` / ``open_f1``: LLaVA-Med's token F1 family. Tokens are
  whitespace words; true positives count every predicted token that also occurs in the reference
  (with the prediction's multiplicity), false negatives every reference token missing from the
  prediction. ``open_recall`` is the figure LLaVA-Med's tables report for open questions.
- ``open_exact_match``: normalised prediction equals normalised reference.
- ``open_exact_match_legacy``: what LLaVA-Med's code calls "exact match score": distinct reference
  words found in the prediction divided by the prediction's token count.
- ``open_hit_legacy``: LLaVA-Med's "open accuracy": the normalised reference is a substring of the
  normalised prediction.
- ``closed_accuracy_legacy``: LLaVA-Med's closed check, a *substring* test, so a reference "no"
  matches "normal" or "not sure" (microsoft/LLaVA-Med#12). Kept so numbers compare with tables.
- ``closed_accuracy``: corrected. For a yes/no reference, the first "yes" or "no" word of the
  prediction must equal it; for any other closed reference (SLAKE's "left", "ct"), the reference
  must appear as whole words in the prediction.

A reference is yes/no when its first word is "yes" or "no" and that word is the whole answer or is
followed by punctuation ("Yes", "no.", "Yes, it is", "No; none seen"; not "no evidence of tumour"):
:func:`yes_no_reference`. Such a reference is scored by that word in both checks (the legacy
substring test looks for "yes", not for "yes it is", so a correct "Yes" is not scored wrong), it
counts in the yes/no diagnostics, and loaders that infer the answer type class it CLOSED.

Diagnostics of the yes/no questions (vital's, not LLaVA-Med's), from the first yes/no word:

- ``closed_yes_rate_on_yes`` / ``closed_yes_rate_on_no``: share of questions answered "yes" among
  those whose reference is "yes" / "no".
- ``closed_discrimination``: their difference (Youden's J). 0 when the answer ignores the question and
  image, 1 when every answer is right; unlike accuracy it does not move with a constant lean to "yes"
  or "no", so a model at chance accuracy shows here whether it leans or guesses.
- ``closed_without_yes_no``: share of yes/no questions answered with neither word (scored wrong).
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vital.vqa.items import VQAItem

# ------------------------------------------------------------------ LLaVA-Med answer normalisation
# Punctuation that is deleted when it touches a space (or when the text has a digit,digit group),
# and replaced by a space otherwise ("left/right" -> "left right", "yes, it is" -> "yes it is").
_PUNCT = tuple(';/[]"{}()=+\\_-><@`,?!')
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# A period is dropped unless a digit follows it ("3.5 cm" keeps its decimal point).
_PERIOD = re.compile(r"\.(?!\d)")
# LLaVA-Med passes re.UNICODE (= 32) as re.sub's positional *count*, so only the first 32 periods of
# an answer are dropped. Reproduced so long answers score as they do in published tables.
_LEGACY_PERIOD_LIMIT = 32
_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
_CONTRACTED_WORDS = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't "
    "haven't he'd he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll ma'am "
    "mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't shan't she'd've "
    "shouldn't shouldn't've should've somebody'd've somebody'll somebody's someone'd someone'd've "
    "someone'll someone's something'd something'd've something'll that's there'd there'd've there're "
    "there's they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll "
    "what're what's what've when's where'd where's where've who'd who'd've who'll who's who've why'll "
    "why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've "
    "you'll you're you've"
)
_CONTRACTED = _CONTRACTED_WORDS.split()


def _apostrophe_variants(word: str) -> Iterable[str]:
    """Spellings of a contraction with some or all apostrophes missing ("couldnt've", "couldntve")."""
    parts = word.split("'")
    for keep in itertools.product((False, True), repeat=len(parts) - 1):
        if all(keep):
            continue
        out = parts[0]
        for part, k in zip(parts[1:], keep, strict=True):
            out += ("'" if k else "") + part
        yield out


_CONTRACTIONS = {variant: word for word in _CONTRACTED for variant in _apostrophe_variants(word)}


def normalize_answer(text: str) -> str:
    """LLaVA-Med's answer normalisation: lower case, punctuation rules, number words, articles, contractions."""
    text = str(text).lower()
    glue = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in _PUNCT:
        # The test looks at the original text, the replacement acts on the running copy.
        delete = glue or (p + " ") in text or (" " + p) in text
        out = out.replace(p, "" if delete else " ")
    out = _PERIOD.sub("", out, count=_LEGACY_PERIOD_LIMIT)
    words = [_NUMBER_WORDS.get(w, w) for w in out.split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words).replace(",", "")


def answer_tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


# ------------------------------------------------------------------ per-answer scores
@dataclass(frozen=True)
class TokenScores:
    precision: float
    recall: float
    f1: float


def token_scores(prediction: str, reference: str) -> TokenScores:
    """LLaVA-Med's token precision/recall/F1 (true positives counted with the prediction's multiplicity)."""
    pred = Counter(answer_tokens(prediction))
    ref = Counter(answer_tokens(reference))
    if not pred or not ref:
        return TokenScores(0.0, 0.0, 0.0)
    tp = sum(n for w, n in pred.items() if w in ref)
    fp = sum(n for w, n in pred.items() if w not in ref)
    fn = sum(n for w, n in ref.items() if w not in pred)
    if tp == 0:
        return TokenScores(0.0, 0.0, 0.0)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return TokenScores(precision, recall, 2 * precision * recall / (precision + recall))


def exact_match(prediction: str, reference: str) -> float:
    ref = normalize_answer(reference)
    return float(bool(ref) and normalize_answer(prediction) == ref)


def exact_match_legacy(prediction: str, reference: str) -> float:
    """LLaVA-Med's "exact match score": distinct reference words present / predicted token count."""
    pred = answer_tokens(prediction)
    if not pred:
        return 0.0
    found = sum(1 for w in set(answer_tokens(reference)) if w in set(pred))
    return found / len(pred)


def substring_hit(prediction: str, reference: str) -> float:
    """LLaVA-Med's closed-set check and open "accuracy": normalised reference is a substring of the prediction.
    A reference that normalises to nothing ("[]", "-", "?") is in every text, so it is never a hit here (the
    loaders drop such questions with their reason)."""
    ref = normalize_answer(reference)
    return float(bool(ref) and ref in normalize_answer(prediction))


_YES_NO_REFERENCE = re.compile(r"^\s*(yes|no)\s*(?:$|[,.;:!])", re.IGNORECASE)


def yes_no_reference(reference: str) -> str | None:
    """The answer's yes/no word when the reference is a yes/no answer (module docstring), else None."""
    m = _YES_NO_REFERENCE.match(str(reference))
    return m.group(1).lower() if m else None


def first_yes_no(prediction: str) -> str | None:
    """The first word of the normalised prediction that is exactly "yes" or "no"."""
    return next((w for w in answer_tokens(prediction) if w in ("yes", "no")), None)


def _contains_words(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    n = len(needle)
    return n > 0 and any(list(haystack[i : i + n]) == list(needle) for i in range(len(haystack) - n + 1))


def closed_hit(prediction: str, reference: str) -> float:
    """Corrected closed-set check: first yes/no word for yes/no references, whole-word match otherwise."""
    yes_no = yes_no_reference(reference)
    if yes_no is not None:
        return float(first_yes_no(prediction) == yes_no)
    return float(_contains_words(answer_tokens(prediction), answer_tokens(reference)))


def score_item(item: VQAItem, prediction: str) -> dict[str, float]:
    """Every per-question score that applies to the item's answer type."""
    if item.answer_type == "CLOSED":
        return {
            "closed_accuracy": closed_hit(prediction, item.answer),
            "closed_accuracy_legacy": substring_hit(prediction, yes_no_reference(item.answer) or item.answer),
        }
    ts = token_scores(prediction, item.answer)
    return {
        "open_recall": ts.recall,
        "open_precision": ts.precision,
        "open_f1": ts.f1,
        "open_exact_match": exact_match(prediction, item.answer),
        "open_exact_match_legacy": exact_match_legacy(prediction, item.answer),
        "open_hit_legacy": substring_hit(prediction, item.answer),
    }


# ------------------------------------------------------------------ aggregation
CLOSED_KEYS = ("closed_accuracy", "closed_accuracy_legacy")
OPEN_KEYS = (
    "open_recall",
    "open_precision",
    "open_f1",
    "open_exact_match",
    "open_exact_match_legacy",
    "open_hit_legacy",
)


def _mean_scores(scores: Sequence[dict[str, float]]) -> dict[str, float | int]:
    closed = [s for s in scores if "closed_accuracy" in s]
    opened = [s for s in scores if "open_recall" in s]
    out: dict[str, float | int] = {"n_closed": len(closed), "n_open": len(opened)}
    for keys, group in ((CLOSED_KEYS, closed), (OPEN_KEYS, opened)):
        if group:  # an empty group has no score (no NaN in metrics files)
            out.update({k: sum(s[k] for s in group) / len(group) for k in keys})
    return out


def yes_no_conditioning(items: Sequence[VQAItem], predictions: Sequence[str]) -> dict[str, float]:
    """The yes/no diagnostics of the module docstring; a rate is left out when its group is empty."""
    said: dict[str, list[str | None]] = {"yes": [], "no": []}
    for item, pred in zip(items, predictions, strict=True):
        ref = yes_no_reference(item.answer)
        if item.answer_type == "CLOSED" and ref is not None:
            said[ref].append(first_yes_no(pred))
    out: dict[str, float] = {}
    for ref, words in said.items():
        if words:
            out[f"closed_yes_rate_on_{ref}"] = sum(w == "yes" for w in words) / len(words)
    if said["yes"] and said["no"]:
        out["closed_discrimination"] = out["closed_yes_rate_on_yes"] - out["closed_yes_rate_on_no"]
    answered = said["yes"] + said["no"]
    if answered:
        out["closed_without_yes_no"] = sum(w is None for w in answered) / len(answered)
    return out


def summarize(
    items: Sequence[VQAItem], predictions: Sequence[str], by: Sequence[str] = ("domain", "question_type")
) -> dict:
    """Mean scores over a set, overall and per value of each attribute in ``by`` that the set records."""
    if len(items) != len(predictions):
        raise ValueError(f"{len(items)} items but {len(predictions)} predictions")
    rows = [(i, p, score_item(i, p)) for i, p in zip(items, predictions, strict=True)]

    def summary(group: list[tuple[VQAItem, str, dict[str, float]]]) -> dict:
        return {
            **_mean_scores([s for _, _, s in group]),
            **yes_no_conditioning([i for i, _, _ in group], [p for _, p, _ in group]),
        }

    out: dict = summary(rows)
    for attr in by:
        groups: dict[str, list[tuple[VQAItem, str, dict[str, float]]]] = {}
        for row in rows:
            key = getattr(row[0], attr)
            if key is not None:
                groups.setdefault(str(key), []).append(row)
        if groups:
            out[f"by_{attr}"] = {k: summary(v) for k, v in sorted(groups.items())}
    return out


# per question kind (the set's question_type): what a model can read from the image differs by kind (the demo
# LLM names a figure's modality but reads no lesion side), so a difference in one kind is diluted by the others
KIND_METRICS = ("open_recall", "closed_discrimination")


def by_kind(summary: dict, metrics: Sequence[str] = KIND_METRICS) -> dict[str, float]:
    """``{f"{metric}_{kind}": value}`` for every question kind ``summarize(..., by=("question_type",))``
    found (``open_recall_modality``, ``closed_discrimination_side``, ...); a kind without the metric's
    questions has no entry."""
    return {
        f"{m}_{kind}": block[m]
        for kind, block in (summary.get("by_question_type") or {}).items()
        for m in metrics
        if isinstance(block.get(m), int | float)
    }


def closed_baselines(items: Sequence[VQAItem]) -> dict[str, float | int]:
    """What guessing scores on the closed questions of a set.

    ``closed_chance``: a uniform guess between two options (yes/no, or the "A or B" of other closed
    questions) is right half the time. ``closed_majority``: always giving the set's most common
    closed answer (corrected check), the stronger baseline when answers are imbalanced.
    """
    closed = [i for i in items if i.answer_type == "CLOSED"]
    if not closed:
        return {"n_closed": 0}
    counts = Counter(yes_no_reference(i.answer) or normalize_answer(i.answer) for i in closed)
    majority = counts.most_common(1)[0][0]
    hits = sum(closed_hit(majority, i.answer) for i in closed)
    return {
        "n_closed": len(closed),
        "closed_chance": 0.5,
        "closed_majority": hits / len(closed),
    }
