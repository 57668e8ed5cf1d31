"""Small, safe file helpers: streamed JSONL, atomic writes, metrics JSON."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class RecordError(ValueError):
    """A malformed input record; the message names the file and line."""


# One rule for a UTF-8 byte order mark in every JSON/JSONL reader: accepted and stripped at the start of a
# file, and at the start of a JSONL line (files joined with `cat` carry one per file). Editors on Windows write it.
BOM = "\ufeff"


def strip_bom(text: str) -> str:
    """``text`` without one leading UTF-8 byte order mark."""
    return text[1:] if text.startswith(BOM) else text


def read_text(path: str | os.PathLike, errors: str = "strict") -> str:
    """A UTF-8 text file's content, without a leading byte order mark."""
    return strip_bom(Path(path).read_text(encoding="utf-8", errors=errors))


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    path = Path(path)
    lineno = 0
    with path.open(encoding="utf-8") as f:
        try:
            for lineno, line in enumerate(f, 1):  # noqa: B007 - lineno names the line a decode error is on
                line = strip_bom(line)
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise RecordError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        except UnicodeDecodeError as e:
            raise RecordError(f"{path}:{lineno + 1}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def json_lines(path: str | os.PathLike) -> Iterator[tuple[str, Any, str]]:
    """``(where, value, error)`` per non-blank line of a JSONL file, ``where`` = ``"<path>:<line>"``; a line
    that is not JSON has ``error`` set (and ``value`` None) instead of stopping the read."""
    path = Path(path)
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = strip_bom(line)
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line), ""
            except json.JSONDecodeError as e:
                yield f"{path}:{lineno}", None, e.msg


def read_records(
    path: str | os.PathLike, model: type[M], invalid: Callable[[str, str], None] = lambda where, detail: None
) -> Iterator[tuple[int, M]]:
    """``(line number, record)`` of every line of the JSONL ``path`` that parses and validates as ``model``;
    any other line is skipped and passed to ``invalid(where, detail)`` with ``where`` = ``"<path>:<line>"``
    (``Drops.invalid(reason)`` counts them). Blank lines are skipped silently."""
    for where, raw, error in json_lines(path):
        if error:
            invalid(where, f"not valid JSON ({error})")
            continue
        try:
            rec = model.model_validate(raw)
        except ValidationError as e:
            err = e.errors()[0]
            invalid(where, f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}")
            continue
        yield int(where.rsplit(":", 1)[1]), rec


def write_jsonl(path: str | os.PathLike, records: Iterable[dict | Any]) -> int:
    """Write records atomically (temp file + rename); returns the count written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with _atomic(path) as f:
        for rec in records:
            if hasattr(rec, "model_dump"):
                rec = rec.model_dump(by_alias=True)
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic(path) as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """A CSV table for ``dvc plots`` (``\\n`` line ends, written atomically); returns the number of rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with _atomic(path) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for row in rows:
            w.writerow(row)
            n += 1
    return n


def write_curve(path: str | os.PathLike, losses: Iterable[tuple[int, float]]) -> int:
    """A loss curve, ``step,loss``. A stage whose backend trains nothing (``restore``) writes it empty,
    because dvc.yaml declares the curve for every backend."""
    return write_csv(path, ["step", "loss"], ((step, f"{loss:.6f}") for step, loss in losses))


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError as e:
        raise RecordError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()
"""The mode a plain ``open(path, "w")`` would give (temporary files are created 0600: chmod before rename)."""


class _atomic:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        self.f = os.fdopen(fd, "w", encoding="utf-8")
        return self.f

    def __exit__(self, exc_type, exc, tb):
        self.f.close()
        if exc_type is None:
            os.chmod(self.tmp, FILE_MODE)
            os.replace(self.tmp, self.path)
        else:
            os.unlink(self.tmp)
        return False
