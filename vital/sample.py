"""The sample stage: a domain-stratified, seeded sample of figure records from the corpus.

Records are streamed and validated; a bad record is skipped, counted by reason and listed in
``metrics/sample.json``. Each record's draw is decided by a stable hash of ``(seed, pair_id)``, so the
sample is reproducible and a figure's selection does not change when unrelated records are added
or removed; memory stays bounded by ``per_domain`` per domain.
"""

from __future__ import annotations

import heapq
import json
import time
from collections import Counter
from pathlib import Path

from pydantic import ValidationError

from vital.io import write_json, write_jsonl
from vital.params import SampleParams
from vital.progress import progress
from vital.schema import DOMAINS, FigureRecord
from vital.seeding import stable_seed

MAX_LISTED = 50  # problems listed in metrics (all are counted)


class _Problems:
    def __init__(self, path: Path):
        self.path = path
        self.counts: Counter[str] = Counter()
        self.listed: list[dict] = []
        self.unparsed = 0  # lines that never became a record dict

    def add(self, line: int, reason: str, detail: str = "", pair_id: str | None = None) -> None:
        self.counts[reason] += 1
        if len(self.listed) < MAX_LISTED:
            self.listed.append(
                {"where": f"{self.path}:{line}", "pair_id": pair_id, "reason": reason, "detail": detail}
            )


def _check(raw: dict, root: Path) -> tuple[FigureRecord | None, str, str]:
    """(record, reason, detail); reason is '' for a usable record."""
    try:
        rec = FigureRecord.model_validate(raw)
    except ValidationError as e:
        fields = ", ".join(".".join(str(p) for p in err["loc"]) for err in e.errors())
        return None, "invalid_record", f"bad or missing fields: {fields}"
    if not rec.fig_caption.strip():
        return rec, "empty_caption", ""
    if rec.primary_domain not in DOMAINS:
        return rec, "unknown_domain", f"domain flags {rec.domain} name none of {list(DOMAINS)}"
    if not rec.image.strip():
        return rec, "missing_image", "no image path"
    if not rec.image.startswith(("http://", "https://")) and not (root / rec.image).is_file():
        return rec, "missing_image", f"{root / rec.image} does not exist"
    return rec, "", ""


def _stream(path: Path, problems: _Problems):
    """(line number, raw dict) per parsable line; unparsable lines are counted, not fatal."""
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                problems.add(lineno, "invalid_json", e.msg)
                problems.unparsed += 1
                continue
            if not isinstance(raw, dict):
                problems.add(lineno, "invalid_record", f"expected a JSON object, got {type(raw).__name__}")
                problems.unparsed += 1
                continue
            yield lineno, raw


def run(figures_path: Path, out: Path, metrics: Path, cfg: SampleParams) -> dict:
    """Draw ``cfg.per_domain`` figures per domain; write the sample and metrics; return the metrics."""
    start = time.perf_counter()
    figures_path, out, metrics = Path(figures_path), Path(out), Path(metrics)
    if not figures_path.is_file():
        raise FileNotFoundError(
            f"{figures_path}: corpus index not found (build the demo world with `vital world`)"
        )
    root = figures_path.parent
    problems = _Problems(figures_path)
    available: Counter[str] = Counter()
    not_selected: Counter[str] = Counter()
    seen: set[str] = set()
    # per domain, a max-heap (negated key) holding the per_domain smallest hash keys seen so far
    heaps: dict[str, list[tuple[int, int, dict]]] = {d: [] for d in cfg.domains}
    read = 0
    for lineno, raw in progress(_stream(figures_path, problems), "sample: reading corpus"):
        read += 1
        rec, reason, detail = _check(raw, root)
        pid = rec.pair_id if rec else raw.get("pair_id")
        if not reason and rec.pair_id in seen:
            reason, detail = "duplicate_pair_id", f"{rec.pair_id} appears earlier in the file"
        if reason:
            problems.add(lineno, reason, detail, pid if isinstance(pid, str) else None)
            continue
        seen.add(rec.pair_id)
        domain = rec.primary_domain
        if domain not in heaps:
            not_selected[domain] += 1
            continue
        available[domain] += 1
        item = (-stable_seed(cfg.seed, "sample", rec.pair_id), lineno, raw)
        if len(heaps[domain]) < cfg.per_domain:
            heapq.heappush(heaps[domain], item)
        elif item[0] > heaps[domain][0][0]:
            heapq.heapreplace(heaps[domain], item)
    chosen = {d: sorted(h, key=lambda it: it[1]) for d, h in heaps.items()}  # corpus order within a domain
    records = [raw for d in cfg.domains for _, _, raw in chosen[d]]
    if not records:
        raise ValueError(
            f"{figures_path}: no usable figures for domains {cfg.domains} "
            f"(read {read}, skipped {dict(problems.counts)})"
        )
    write_jsonl(out, records)
    result = {
        "read": read + problems.unparsed,
        "sampled": len(records),
        "per_domain": {d: {"available": available[d], "sampled": len(chosen[d])} for d in cfg.domains},
        "short_domains": [d for d in cfg.domains if len(chosen[d]) < cfg.per_domain],
        "not_selected_domains": dict(not_selected),
        "skipped": sum(problems.counts.values()),
        "skipped_by_reason": dict(sorted(problems.counts.items())),
        "problems": problems.listed,
        "wall_s": round(time.perf_counter() - start, 3),
    }
    write_json(metrics, result)
    return result
