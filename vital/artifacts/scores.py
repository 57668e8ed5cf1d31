"""Scores per candidate: the selector's (``artifacts/scores.jsonl``, ``scores_by_weight.jsonl``) and the
judge's (``artifacts/judgments.jsonl``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from vital.artifacts.lines import BAD_LINE, first_by, lines, none_usable, require
from vital.drops import Drops
from vital.schema import Judgment


def read_scores(path: Path, drops: Drops, field: str = "score", key: str | None = None) -> dict[str, float]:
    """``candidate_id -> score`` of the selector's ``scores.jsonl`` (``field`` ``score``), or of one head
    of ``scores_by_weight.jsonl`` (``field`` ``scores``, ``key`` the human weight, e.g. ``"0"``).

    Dropped: ``bad_line`` (not a JSON object with a string candidate_id and a finite number, or no such
    ``key``); ``duplicate_score`` (a second score of a candidate: the first wins).
    Fatal: a missing file, no usable score."""
    require(path)
    out: dict[str, float] = {}
    for where, _, line in lines(path):
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
        raise none_usable(path, "score", drops)
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


def read_judgments(path: Path, drops: Drops) -> dict[str, Judgment]:
    """``candidate_id -> Judgment``.

    Dropped: ``bad_line`` (a score outside 0-10 included); ``duplicate_judgment`` (a second judgment of a
    candidate: the first wins). Fatal: a missing file, no usable judgment."""
    return first_by(path, Judgment, drops, "candidate_id", "duplicate_judgment", "judgment")


def judge_scores(path: Path, drops: Drops) -> dict[str, float]:
    """``candidate_id -> score`` of :func:`read_judgments` (same rules)."""
    return {cid: j.score for cid, j in read_judgments(path, drops).items()}
