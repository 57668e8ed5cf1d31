"""The text of a horizontally mirrored figure: laterality words swap (a figure flipped left-right shows its
lesion on the other side). Used by the foundation's mirror augmentation and by the selector's side features."""

from __future__ import annotations

import re

_SIDE = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def mirror_text(text: str) -> str:
    """The caption of the horizontally mirrored figure: 'left' and 'right' swap (case kept)."""

    def swap(m: re.Match) -> str:
        word = m.group(0)
        other = "right" if word.lower() == "left" else "left"
        return other.capitalize() if word[0].isupper() else other

    return _SIDE.sub(swap, text)
