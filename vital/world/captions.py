"""PMC-style captions and in-text mentions written from the hidden truth.

A share of captions leaves the side out and some are vague (no findings at all): a judge that reads
only the caption then cannot check those facts, while a clinician looking at the image can.
"""

from __future__ import annotations

import numpy as np

from vital.world.findings import STYLES
from vital.world.language import be, lesion_np, lower_first, side_phrase

VAGUE_RATE = 0.08  # default share of captions that state no findings at all (world.caption_vague)
MULTIPLE_RATE = 0.3  # captions that say "multiple" instead of the exact count (count >= 2)
SIZE_RATE = 0.6  # captions that state the size


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def write_caption(
    truth: dict, fig_label: str, omit_side: bool, rng: np.random.Generator, vague_rate: float = VAGUE_RATE
) -> tuple[str, str]:
    """Return (caption, in-text mention); the mention is '' for about a fifth of figures."""
    style = STYLES[truth["domain"]]
    head = _pick(rng, style.caption_heads)
    age, sex = int(rng.integers(24, 85)), _pick(rng, ("man", "woman"))
    short = _pick(rng, style.mention_heads)
    if rng.random() < vague_rate:
        caption = _pick(
            rng,
            (
                f"{head} of a {age}-year-old {sex} at presentation.",
                f"Representative image from case {int(rng.integers(1, 12))}. {head}.",
                f"{head} (see text for details).",
                f"{head} obtained at follow-up.",
            ),
        )
        mention = f"The patient underwent {short} ({fig_label})." if rng.random() < 0.6 else ""
        return caption, mention
    if not truth["lesion"]:
        caption = _pick(
            rng,
            (
                f"{head} of a {age}-year-old {sex} showing no focal lesion.",
                f"{head}. No abnormality is identified.",
                f"Normal {lower_first(head)} without evidence of a lesion.",
            ),
        )
        mention = f"Follow-up {short} showed no lesion ({fig_label})." if rng.random() < 0.8 else ""
        return caption, mention

    n = truth["count"]
    word = "multiple" if n >= 2 and rng.random() < MULTIPLE_RATE else None
    np_ = lesion_np(truth, with_size=rng.random() < SIZE_RATE, count_word=word)
    where = "" if omit_side else f" {side_phrase(truth['side'])}"
    arrows = " (arrow)" if n == 1 else " (arrows)"
    caption = _pick(
        rng,
        (
            f"{head} of a {age}-year-old {sex} showing {np_}{where}{arrows}.",
            f"{head} demonstrates {np_}{where}{arrows}.",
            f"{np_[0].upper() + np_[1:]} {be(n)} seen{where} on {lower_first(head)}.",
            f"{head}: {np_}{where}{arrows}. Scale bar, 1 cm."
            if truth["domain"] == "gross"
            else f"{head} revealing {np_}{where}{arrows}.",
        ),
    )
    mention = ""
    if rng.random() < 0.8:
        mention = _pick(
            rng,
            (
                f"On admission, {short} revealed {np_}{where} ({fig_label}).",
                f"{short[0].upper() + short[1:]} showed {np_}{where} ({fig_label}).",
            ),
        )
    return caption, mention
