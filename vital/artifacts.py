"""One typed reader per pipeline artifact read by more than one stage or tool, each taking the ``Drops``.

Every reader applies one rule per problem, under one drop name, wherever the artifact is read:

- a missing file is fatal: ``FileNotFoundError`` naming the file and the stage that writes it;
- a line that is not JSON, not UTF-8, or not a valid record is dropped as ``bad_line`` (where: ``file:line``);
- a file with no usable record at all is fatal: ``RecordError`` naming the file and the first drops
  (except clinician labels: without them the pairs are the judge's alone, which the pairs stage warns about).

The rules particular to each artifact are in its reader's docstring. A stage that ends up with nothing
after its own checks still fails on one line; that is the stage's business, not the reader's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from vital.drops import Drops
from vital.io import BOM, RecordError, read_json
from vital.schema import Candidate, FigureRecord, Judgment, Preference

M = TypeVar("M", bound=BaseModel)

BAD_LINE = "bad_line"

# the stage that writes each artifact, for the "not found" hint
_MADE_BY = {
    "sample.jsonl": "sample",
    "candidates.jsonl": "generate",
    "judgments.jsonl": "judge",
    "labels.jsonl": "labels",
    "scores.jsonl": "select",
    "scores_by_weight.jsonl": "select",
}


def require(path: Path) -> None:
    """``FileNotFoundError`` naming ``path`` and the stage that writes it, when it is not a file."""
    if not path.is_file():
        stage = _MADE_BY.get(path.name)
        hint = f" (run the {stage} stage first: dvc repro {stage})" if stage else ""
        raise FileNotFoundError(f"{path}: not found{hint}")


def _none_usable(path: Path, what: str, drops: Drops) -> RecordError:
    """The one-line error of a file with no usable record, naming its first drops."""
    own = [e for e in drops.examples if e["where"].startswith(f"{path}:")][:3]
    why = "; ".join(f"{e['where']}: {e['reason']} ({e['detail']})" for e in own)
    return RecordError(f"{path}: no usable {what} ({why or 'the file is empty'})")


def _lines(path: Path) -> Iterator[tuple[str, int, bytes]]:
    """``(where, byte offset, line)`` of every non-blank line, ``where`` = ``"<path>:<line>"``, a leading
    byte order mark stripped (the one rule of vital.io)."""
    bom = BOM.encode()
    offset = 0
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            start, offset = offset, offset + len(line)
            if line.startswith(bom):
                line = line[len(bom) :]
            if line.strip():
                yield f"{path}:{lineno}", start, line


def _parse(line: bytes, model: type[M]) -> tuple[M | None, str]:
    """(record, "") or (None, why it is not one)."""
    try:
        return model.model_validate_json(line), ""
    except ValidationError as e:
        err = e.errors()[0]
        if err["type"] == "json_invalid":
            return None, f"not valid JSON ({err['msg']})"
        return None, f"{'.'.join(str(x) for x in err['loc']) or 'record'}: {err['msg']}"


def records(path: Path, model: type[M], drops: Drops) -> Iterator[tuple[str, int, M]]:
    """``(where, byte offset, record)`` of every line that is a valid ``model``; the others are dropped as
    ``bad_line``. The readers below add their artifact's rules on top."""
    for where, offset, line in _lines(path):
        rec, why = _parse(line, model)
        if rec is None:
            drops.add(BAD_LINE, where, why)
            continue
        yield where, offset, rec


# ------------------------------------------------------------------ sample (artifacts/sample.jsonl)
def read_sample(path: Path, drops: Drops) -> dict[str, FigureRecord]:
    """``pair_id -> FigureRecord`` of the sampled figures, in file order.

    Dropped: ``bad_line``; ``duplicate_figure`` (a second record of a pair_id: the first wins).
    Fatal: a missing file, no usable record."""
    return _first_by(path, FigureRecord, drops, "pair_id", "duplicate_figure", "figure record")


def _first_by(path: Path, model: type[M], drops: Drops, key: str, duplicate: str, what: str) -> dict[str, M]:
    """The valid records of ``path`` by their ``key`` field, the first of a key kept (a later one dropped as
    ``duplicate``); fatal when the file is missing or has no usable record."""
    require(path)
    out: dict[str, M] = {}
    for where, _, rec in records(path, model, drops):
        value = getattr(rec, key)
        if value in out:
            drops.add(duplicate, where, value)
            continue
        out[value] = rec
    if not out:
        raise _none_usable(path, what, drops)
    return out


# ------------------------------------------------------------------ candidates (artifacts/candidates.jsonl)
@dataclass(frozen=True, slots=True)
class CandidateRef:
    """A candidate without its conversation: where to read it back from ``candidates.jsonl``."""

    id: str
    pair_id: str
    domain: str
    offset: int


def _candidates(
    path: Path, drops: Drops, figures: Mapping[str, object] | None
) -> Iterator[tuple[int, Candidate]]:
    require(path)
    seen: set[str] = set()
    for where, offset, c in records(path, Candidate, drops):
        if c.id in seen:
            drops.add("duplicate_candidate", where, c.id)
            continue
        if figures is not None and c.pair_id not in figures:
            drops.add("figure_not_in_sample", where, f"{c.id}: figure {c.pair_id} is not in the sample")
            continue
        if not any(t.from_ == "gpt" for t in c.conversations):
            drops.add("no_answer", where, c.id)
            continue
        seen.add(c.id)
        yield offset, c
    if not seen:
        raise _none_usable(path, "candidate", drops)


def read_candidates(path: Path, drops: Drops, figures: Mapping[str, object] | None = None) -> list[Candidate]:
    """The candidates, in file order.

    Dropped: ``bad_line``; ``duplicate_candidate`` (a second record of an id: the first wins);
    ``figure_not_in_sample`` (only when ``figures``, the sample by pair_id, is given); ``no_answer`` (no
    gpt turn). Fatal: a missing file, no usable candidate."""
    return [c for _, c in _candidates(path, drops, figures)]


def candidate_refs(
    path: Path, drops: Drops, figures: Mapping[str, object] | None = None
) -> list[CandidateRef]:
    """:func:`read_candidates` without the conversations (validated once, read back by
    :class:`CandidateFile`): memory grows by a small tuple per candidate."""
    return [
        CandidateRef(c.id, c.pair_id, c.domain, offset) for offset, c in _candidates(path, drops, figures)
    ]


class CandidateFile:
    """Reads candidates back by offset (one open file, one record in memory at a time)."""

    def __init__(self, path: Path):
        self.f = path.open("rb")

    def get(self, ref: CandidateRef) -> Candidate:
        self.f.seek(ref.offset)
        line = self.f.readline()
        return Candidate.model_validate_json(line[3:] if line.startswith(BOM.encode()) else line)

    def close(self) -> None:
        self.f.close()


# ------------------------------------------------------------------ scores (select, judge)
def read_scores(path: Path, drops: Drops, field: str = "score", key: str | None = None) -> dict[str, float]:
    """``candidate_id -> score`` of the selector's ``scores.jsonl`` (``field`` ``score``), or of one head
    of ``scores_by_weight.jsonl`` (``field`` ``scores``, ``key`` the human weight, e.g. ``"0"``).

    Dropped: ``bad_line`` (not a JSON object with a string candidate_id and a finite number, or no such
    ``key``); ``duplicate_score`` (a second score of a candidate: the first wins).
    Fatal: a missing file, no usable score."""
    require(path)
    out: dict[str, float] = {}
    for where, _, line in _lines(path):
        value, why = _score(line, field, key)
        if why:
            drops.add(BAD_LINE, where, why)
            continue
        cid, score = value
        if cid in out:
            drops.add("duplicate_score", where, cid)
            continue
        out[cid] = score
    if not out:
        raise _none_usable(path, "score", drops)
    return out


def _score(line: bytes, field: str, key: str | None) -> tuple[tuple[str, float], str]:
    try:
        rec = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return ("", 0.0), f"not valid JSON ({e})"
    if not isinstance(rec, dict):
        return ("", 0.0), f"expected a JSON object, got {type(rec).__name__}"
    value = rec.get(field)
    if key is not None:
        if not isinstance(value, dict) or key not in value:
            have = sorted(value) if isinstance(value, dict) else None
            return ("", 0.0), f"no {field}[{key!r}] (has {have})"
        value = value[key]
    cid = rec.get("candidate_id")
    if not isinstance(cid, str) or isinstance(value, bool) or not isinstance(value, int | float):
        return ("", 0.0), f"needs a string candidate_id and a numeric {field}"
    if not math.isfinite(value):
        return ("", 0.0), f"{field} is {value}"
    return (cid, float(value)), ""


# ------------------------------------------------------------------ judgments (artifacts/judgments.jsonl)
def read_judgments(path: Path, drops: Drops) -> dict[str, Judgment]:
    """``candidate_id -> Judgment``.

    Dropped: ``bad_line`` (a score outside 0-10 included); ``duplicate_judgment`` (a second judgment of a
    candidate: the first wins). Fatal: a missing file, no usable judgment."""
    return _first_by(path, Judgment, drops, "candidate_id", "duplicate_judgment", "judgment")


def judge_scores(path: Path, drops: Drops) -> dict[str, float]:
    """``candidate_id -> score`` of :func:`read_judgments` (same rules)."""
    return {cid: j.score for cid, j in read_judgments(path, drops).items()}


# ------------------------------------------------------------------ clinician labels (artifacts/labels.jsonl)
def read_labels(path: Path, drops: Drops, candidates: Mapping[str, str] | None = None) -> list[Preference]:
    """The clinician preferences, in file order.

    Dropped: ``bad_line``; ``label_repeats_candidate`` (a ranking naming a candidate twice); with
    ``candidates`` (candidate id -> pair_id) given, ``label_unknown_candidate`` and
    ``label_candidate_of_other_figure``. Fatal: a missing file. An empty file is not: without labels
    the pairs are the judge's alone (the pairs stage warns)."""
    require(path)
    out = []
    for where, _, p in records(path, Preference, drops):
        if candidates is not None:
            unknown = [c for c in p.ranking if c not in candidates]
            if unknown:
                drops.add("label_unknown_candidate", where, f"{p.annotator} names unknown {unknown}")
                continue
            foreign = [c for c in p.ranking if candidates[c] != p.pair_id]
            if foreign:
                drops.add("label_candidate_of_other_figure", where, f"{foreign} not of figure {p.pair_id}")
                continue
        if len(set(p.ranking)) != len(p.ranking):
            drops.add("label_repeats_candidate", where, f"{p.ranking}")
            continue
        out.append(p)
    return out


# ------------------------------------------------------------------ curated sets (artifacts/curated/<name>.json)
def read_curated(path: Path) -> list[dict]:
    """A curated set: a JSON list of LLaVA records (curate, bakeoff subsets; read by tune and export).

    It is written whole by one stage, so any problem is fatal, naming the file: missing, not JSON, not a
    list, or records that are not JSON objects (their indices)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: curated set not found (run the curate stage first: dvc repro curate)"
        )
    data = read_json(path)
    if not isinstance(data, list):
        raise RecordError(f"{path}: expected a JSON list of LLaVA records, got {type(data).__name__}")
    bad = [i for i, r in enumerate(data) if not isinstance(r, dict)]
    if bad:
        raise RecordError(f"{path}: records {bad[:5]} are not JSON objects")
    return data
