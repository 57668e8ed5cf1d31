"""Record formats exchanged between stages.

They follow the field's own formats: PMC-15M / LLaVA-Med figure records, LLaVA conversation JSON,
and one preference record shape shared by simulated and real clinicians.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

DOMAINS: tuple[str, ...] = ("chest_xray", "ct_scan", "mri", "histology", "gross")
"""LLaVA-Med's domain flags, in a fixed order (used for stratification and per-domain counts)."""


class FigureRecord(BaseModel):
    """One PMC figure–caption pair as in PMC-15M / LLaVA-Med's figure files."""

    model_config = ConfigDict(extra="allow")

    pair_id: str
    pmid: str | None = Field(
        None, description="PubMed id; LLaVA-Med's image-URL and some figure files lack it"
    )
    pmcid: str | None = Field(None, description="PMC article id (PMC<digits>); vital.licenses fills it")
    license: str | None = Field(
        None,
        description="the article's PMC Open Access license (CC0, CC BY, ...); the sample stage fills it "
        "(vital.licenses), 'unknown' when found nowhere",
    )
    fig_label: str = ""
    fig_caption: str
    in_text_mention: list[str] = Field(default_factory=list)
    domain: dict[str, bool] = Field(default_factory=dict)
    image: str = Field(description="image path relative to the corpus root, or an http(s) URL")

    @field_validator("in_text_mention", mode="before")
    @classmethod
    def _mentions(cls, value):
        # LLaVA-Med writes [{"tokens": "..."}]; accept that, a list of strings, or one string.
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        return [str(m.get("tokens", "")) if isinstance(m, dict) else str(m) for m in value]

    @property
    def primary_domain(self) -> str:
        for name in DOMAINS:
            if self.domain.get(name):
                return name
        return "other"


class Turn(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: Literal["human", "gpt"] = Field(alias="from")
    value: str


class Candidate(BaseModel):
    """One generated conversation for one figure (LLaVA conversation JSON plus provenance)."""

    model_config = ConfigDict(populate_by_name=True)

    id: str = Field(description="candidate id: '<pair_id>#<index>'")
    pair_id: str
    image: str
    domain: str
    conversations: list[Turn]
    generator: dict = Field(default_factory=dict, description="backend, model, prompt digest")

    def digest(self) -> str:
        """Content digest of the conversation: a label made on this text can tell when it changed."""
        turns = [[t.from_, t.value] for t in self.conversations]
        return hashlib.sha256(json.dumps(turns, ensure_ascii=False).encode()).hexdigest()[:16]

    def llava(self) -> dict:
        return {
            "id": self.id,
            "image": self.image,
            "conversations": [t.model_dump(by_alias=True) for t in self.conversations],
        }


class Judgment(BaseModel):
    candidate_id: str
    pair_id: str
    score: float = Field(ge=0, le=10)
    rationale: str = ""
    judge: dict = Field(default_factory=dict)


class Preference(BaseModel):
    """A clinician's preference over candidates of one figure, best first.

    A pairwise comparison is a ranking of two; ``ties`` lists groups judged equal.
    The same record comes from the simulated clinician and from real label files.
    """

    pair_id: str
    annotator: str
    ranking: list[str] = Field(min_length=2, description="candidate ids, best first")
    ties: list[list[str]] = Field(default_factory=list)
    source: str = "files"
    seen: dict[str, str] = Field(
        default_factory=dict,
        description="candidate id -> Candidate.digest() of the text ranked; optional, written by `vital annotate`",
    )


class Pair(BaseModel):
    """One training/evaluation pair for the selector: ``winner`` preferred over ``loser``."""

    winner: str
    loser: str
    pair_id: str
    source: Literal["model", "human"]
    split: Literal["train", "val", "heldout"]
    annotator: str = ""
