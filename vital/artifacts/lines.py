"""The line reader under every JSONL artifact reader: where, offset and validation of each line, the one
``bad_line`` rule, and the one-line errors of a missing or unusable file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from vital.drops import Drops
from vital.io import BOM, RecordError

M = TypeVar("M", bound=BaseModel)

BAD_LINE = "bad_line"

# the stage that writes each artifact, for the "not found" hint
_MADE_BY = {
    "sample.jsonl": "sample",
    "candidates.jsonl": "generate",
    "judgments.jsonl": "judge",
    "labels.jsonl": "labels",
    "pairs.jsonl": "pairs",
    "scores.jsonl": "select",
    "scores_by_weight.jsonl": "select",
}


def require(path: Path) -> None:
    """``FileNotFoundError`` naming ``path`` and the stage that writes it, when it is not a file."""
    if not path.is_file():
        stage = _MADE_BY.get(path.name)
        hint = f" (run the {stage} stage first: dvc repro {stage})" if stage else ""
        raise FileNotFoundError(f"{path}: not found{hint}")


def none_usable(path: Path, what: str, drops: Drops) -> RecordError:
    """The one-line error of a file with no usable record, naming its first drops."""
    own = [e for e in drops.examples if e["where"].startswith(f"{path}:")][:3]
    why = "; ".join(f"{e['where']}: {e['reason']} ({e['detail']})" for e in own)
    return RecordError(f"{path}: no usable {what} ({why or 'the file is empty'})")


def lines(path: Path) -> Iterator[tuple[str, int, bytes]]:
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
    ``bad_line``. Each artifact's reader adds its own rules on top."""
    for where, offset, line in lines(path):
        rec, why = _parse(line, model)
        if rec is None:
            drops.add(BAD_LINE, where, why)
            continue
        yield where, offset, rec


def first_by(path: Path, model: type[M], drops: Drops, key: str, duplicate: str, what: str) -> dict[str, M]:
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
        raise none_usable(path, what, drops)
    return out
