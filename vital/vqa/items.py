"""One evaluation question, whatever file format it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vital.drops import Drops

AnswerType = Literal["CLOSED", "OPEN"]


@dataclass(frozen=True)
class VQAItem:
    """A question about one image with its reference answer.

    ``answer_type`` follows the field's split: CLOSED (yes/no or pick-one) questions are scored by
    closed-set accuracy, OPEN ones by token recall. ``domain`` is the imaging domain or modality,
    ``organ`` the body part, ``question_type`` a set-specific category (e.g. LLaVA-Med's
    ``conversation``/``detailed``); each is None when the set does not record it.
    """

    question_id: str
    image_path: Path
    question: str
    answer: str
    answer_type: AnswerType
    domain: str | None = None
    organ: str | None = None
    question_type: str | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass
class LoadedSet:
    """The items of one evaluation set plus what was left out of it, and why."""

    name: str
    format: str
    path: Path
    items: list[VQAItem]
    images: Path | None = None
    """The image folder the items' paths were resolved against."""
    skipped: list[str] = field(default_factory=list)
    """Invalid records, one line each: ``<file>#<record>: <reason>``."""
    filtered: dict[str, int] = field(default_factory=dict)
    """Valid records left out on purpose (other split, other language), counted by reason."""

    def report(self, max_listed: int = 20) -> dict:
        return {
            "n_items": len(self.items),
            "n_closed": sum(i.answer_type == "CLOSED" for i in self.items),
            "n_open": sum(i.answer_type == "OPEN" for i in self.items),
            **Drops.from_lines(self.skipped, listed=max_listed).metrics(),
            "filtered": dict(self.filtered),
        }
