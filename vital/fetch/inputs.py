"""The image-URL records: LLaVA-Med's JSONL (or the sample with its URLs joined on), one line at a time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vital.fetch.options import Figure, url_problem
from vital.shards import sample_key

_REQUIRED = ("pair_id", "pmc_tar_url", "image_file_path")


def _refusal(where: str, reason: str, detail: str, rec: Any = None) -> dict:
    rec = rec if isinstance(rec, dict) else {}
    pid, url = rec.get("pair_id"), rec.get("pmc_tar_url")
    return {
        "pair_id": pid if isinstance(pid, str) else None,
        "url": url if isinstance(url, str) else None,
        "where": where,
        "reason": reason,
        "detail": detail,
    }


def url_lines(path: Path) -> Iterator[tuple[str, Any, str]]:
    """``(where, value, error)`` per non-blank line, ``where`` = ``"<file>:<line>"`` counting every line
    (blank ones too); a UTF-8 BOM before the first line is dropped, as every vital reader does."""
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{n}", json.loads(line), ""
            except (json.JSONDecodeError, RecursionError) as e:
                yield f"{path}:{n}", None, getattr(e, "msg", type(e).__name__)


def read_url_records(path: Path) -> tuple[list[Figure], list[dict], int]:
    """Unique figures in input order (shard numbers not yet set), the refused lines, and the line count.

    A refused line (not JSON, not an object, a missing or empty field, a URL that is not http(s), a
    repeated pair_id: LLaVA-Med's URL file has some, microsoft/LLaVA-Med#47) is listed with its
    ``file:line`` and a reason, and skipped; the first line of a pair_id wins."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image-URL file not found")
    seen: dict[str, int] = {}
    first_line: dict[str, str] = {}
    figures: list[Figure] = []
    refused: list[dict] = []
    keys: dict[str, str] = {}
    n = 0
    for where, rec, error in url_lines(path):
        n = int(where.rsplit(":", 1)[1])
        if error:
            refused.append(_refusal(where, "bad_json", f"not valid JSON ({error})"))
            continue
        if not isinstance(rec, dict):
            refused.append(_refusal(where, "not_an_object", f"a JSON {type(rec).__name__}, not an object"))
            continue
        missing = [k for k in _REQUIRED if not isinstance(rec.get(k), str) or not rec.get(k).strip()]
        if missing:
            refused.append(_refusal(where, "missing_field", f"missing or empty {', '.join(missing)}", rec))
            continue
        pid = rec["pair_id"]
        if problem := url_problem(rec["pmc_tar_url"]):
            refused.append(_refusal(where, "bad_url", f"{rec['pmc_tar_url'][:200]!r}: {problem}", rec))
            continue
        if pid in seen:
            same = figures[seen[pid]]
            differs = (same.url, same.member) != (rec["pmc_tar_url"], rec["image_file_path"])
            detail = f"repeats {first_line[pid]}" + (" with a different figure" if differs else "")
            refused.append(_refusal(where, "duplicate_pair_id", detail, rec))
            continue
        key = sample_key(pid)
        if key in keys:
            detail = f"pair_id {pid[:200]!r} and {keys[key][:200]!r} map to the same key {key!r}"
            refused.append(_refusal(where, "key_collision", detail, rec))
            continue
        keys[key] = pid
        seen[pid], first_line[pid] = len(figures), where.rsplit("/", 1)[-1]
        figures.append(Figure(pid, rec["pmc_tar_url"], rec["image_file_path"], key, -1))
    return figures, refused, n
