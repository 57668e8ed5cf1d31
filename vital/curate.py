"""Curate: rank candidates by selector score, write top-k% subsets and same-size random baselines.

Every claim that selection helps is measured against ``random<k>.json``: a seeded random subset of the
same pool and size (with large pools many selection methods barely beat it). Optional named mixtures
append external instruction files (e.g. LLaVA-Med's 10K/60K) as in the paper's 150K set.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vital.io import RecordError, read_jsonl, write_json
from vital.params import CurateParams, Params
from vital.paths import Paths, repo_relative
from vital.schema import DOMAINS, Candidate

MAX_LISTED = 50


def subset_name(kind: str, keep: int) -> str:
    return f"{kind}{keep}"


def read_scores(path: Path, problems: dict[str, list[str]]) -> dict[str, float]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run the select stage first)")
    out: dict[str, float] = {}
    for i, raw in enumerate(read_jsonl(path), 1):
        cid, score = raw.get("candidate_id"), raw.get("score")
        if not isinstance(cid, str) or not isinstance(score, int | float):
            problems.setdefault("invalid_score", []).append(f"{path}:{i}")
            continue
        out[cid] = float(score)
    return out


def read_candidates(path: Path, problems: dict[str, list[str]]) -> list[Candidate]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run the generate stage first)")
    out = []
    for i, raw in enumerate(read_jsonl(path), 1):
        try:
            out.append(Candidate.model_validate(raw))
        except ValidationError as e:
            problems.setdefault("invalid_candidate", []).append(f"{path}:{i}: {e.errors()[0]['msg']}")
    return out


def pool(
    cands: list[Candidate], scores: dict[str, float], policy: str, problems: dict[str, list[str]]
) -> list[tuple[Candidate, float]]:
    """Scored candidates eligible for selection, best first (ties broken by id, so ranking is deterministic)."""
    scored = []
    for c in cands:
        if c.id not in scores:
            problems.setdefault("unscored_candidate", []).append(c.id)
            continue
        scored.append((c, scores[c.id]))
    if policy == "best_per_figure":
        best: dict[str, tuple[Candidate, float]] = {}
        for c, s in scored:
            if c.pair_id not in best or (s, _neg(c.id)) > (best[c.pair_id][1], _neg(best[c.pair_id][0].id)):
                best[c.pair_id] = (c, s)
        scored = list(best.values())
    return sorted(scored, key=lambda cs: (-cs[1], cs[0].id))


def baseline_pool(
    cands: list[Candidate], scores: dict[str, float], policy: str, seed: int
) -> list[Candidate]:
    """The random baseline's pool: what selection chooses from, but drawn without the selector.

    ``best_per_figure`` takes one random candidate per figure, ``all`` every candidate. It depends only on
    the candidates and the seed, never on scores, so retraining the selector leaves ``random<k>.json``
    byte-identical and DVC does not retrain the baseline models.
    """
    rng = random.Random(seed)
    by_figure: dict[str, list[Candidate]] = defaultdict(list)
    for c in sorted((c for c in cands if c.id in scores), key=lambda c: c.id):
        by_figure[c.pair_id].append(c)
    if policy == "best_per_figure":
        chosen = [rng.choice(by_figure[f]) for f in sorted(by_figure)]
    else:
        chosen = [c for f in sorted(by_figure) for c in by_figure[f]]
    rng.shuffle(chosen)
    return chosen


def _neg(s: str) -> tuple[int, ...]:
    return tuple(-ord(ch) for ch in s)


def record(c: Candidate, score: float | None) -> dict[str, Any]:
    """LLaVA conversation JSON plus score (None for the random baseline) and provenance."""
    return {
        **c.llava(),
        "domain": c.domain,
        "score": None if score is None else round(score, 6),
        "provenance": {"pair_id": c.pair_id, "candidate": c.id, "generator": c.generator},
    }


def _domain_of(rec: dict[str, Any]) -> str:
    d = rec.get("domain")
    if isinstance(d, str):
        return d
    if isinstance(d, dict):
        for name in DOMAINS:
            if d.get(name):
                return name
    return "unknown"


SUBSET_NAME = re.compile(r"(top|random)\d+")  # a curated subset; any other mix part is a file


def domain_counts(records: list[dict[str, Any]]) -> dict[str, int]:
    return dict(sorted(Counter(_domain_of(r) for r in records).items()))


def load_instruction_file(path: Path, problems: dict[str, list[str]]) -> list[dict[str, Any]]:
    """An external LLaVA instruction file (JSON list as LLaVA-Med publishes it, or JSONL); bad records counted."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: instruction file for curate.mix not found")
    if path.suffix == ".jsonl":
        raw = list(read_jsonl(path))
    else:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(raw, list):
            raise RecordError(f"{path}: expected a JSON list of LLaVA records, got {type(raw).__name__}")
    good = []
    for i, rec in enumerate(raw):
        conv = rec.get("conversations") if isinstance(rec, dict) else None
        if (
            not isinstance(conv, list)
            or len(conv) < 2
            or not all(isinstance(t, dict) and "from" in t and "value" in t for t in conv)
        ):
            problems.setdefault("invalid_external_record", []).append(f"{path}[{i}]")
            continue
        good.append({**rec, "provenance": {"source": str(path)}})
    return good


def build_mixture(
    name: str, parts: list[str], subsets: dict[str, list[dict]], problems: dict[str, list[str]]
) -> tuple[list[dict], dict[str, int]]:
    """Concatenate curated subsets (by name, e.g. ``top80``) and external files; a repeated id is kept once."""
    out, seen, by_part = [], set(), {}
    for part in parts:
        recs = subsets[part] if part in subsets else load_instruction_file(Path(part), problems)
        added = 0
        for r in recs:
            rid = str(r.get("id"))
            if rid in seen:
                problems.setdefault("duplicate_id_in_mixture", []).append(f"{name}: {rid} ({part})")
                continue
            seen.add(rid)
            out.append(r)
            added += 1
        by_part[part] = added
    return out, by_part


def run(cp: CurateParams, paths: Paths) -> dict[str, Any]:
    """The curate stage: ``artifacts/curated/{top,random}<k>.json`` (+ mixtures) and ``metrics/curate.json``."""
    start = time.perf_counter()
    problems: dict[str, list[str]] = {}
    scores = read_scores(paths.scores, problems)
    cands = read_candidates(paths.candidates, problems)
    ranked = pool(cands, scores, cp.policy, problems)
    if not ranked:
        raise RecordError(f"{paths.scores}: no candidate of {paths.candidates} has a score")
    shuffled = [(c, None) for c in baseline_pool(cands, scores, cp.policy, cp.seed)]
    subsets: dict[str, list[dict]] = {}
    report: dict[str, Any] = {}
    for keep in sorted(set(cp.keep)):
        n = max(1, round(keep / 100 * len(ranked)))
        for kind, source in (("top", ranked[:n]), ("random", shuffled[:n])):
            name = subset_name(kind, keep)
            subsets[name] = [record(c, s) for c, s in source]
            report[name] = {
                "records": n,
                "mean_score": round(sum(scores[c.id] for c, _ in source) / n, 4),
                "by_domain": domain_counts(subsets[name]),
            }
    paths.curated.mkdir(parents=True, exist_ok=True)
    for name, recs in subsets.items():
        write_json(paths.curated / f"{name}.json", recs, indent=None)
    mixtures = {}
    for name, parts in cp.mix.items():
        if name in subsets:
            raise RecordError(f"curate.mix.{name}: name clashes with a curated subset")
        unknown = [
            p for p in parts if p.startswith(("top", "random")) and p not in subsets and not Path(p).exists()
        ]
        if unknown:
            raise RecordError(
                f"curate.mix.{name}: {unknown} are neither curated subsets ({sorted(subsets)}) nor files"
            )
        recs, by_part = build_mixture(name, parts, subsets, problems)
        write_json(paths.curated / f"{name}.json", recs, indent=None)
        mixtures[name] = {"records": len(recs), "by_part": by_part, "by_domain": domain_counts(recs)}
    metrics = {
        "policy": cp.policy,
        "candidates": len(cands),
        "pool": len(ranked),
        "pool_by_domain": domain_counts([record(c, s) for c, s in ranked]),
        "subsets": report,
        "mixtures": mixtures,
        "dropped": {k: len(v) for k, v in problems.items()},
        "dropped_examples": {k: v[:MAX_LISTED] for k, v in problems.items()},
        "wall_seconds": round(time.perf_counter() - start, 2),
    }
    write_json(paths.metric("curate"), metrics)
    return metrics


def by_figure(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        out[r["provenance"].get("pair_id", "")].append(r)
    return out


def run_stage(p: Params, paths: Paths) -> dict[str, Any]:
    return run(p.curate, paths)


def mix_files(p: Params, root: Path) -> list[str]:
    """Instruction files named by ``curate.mix`` (the curated subsets it names are the stage's own outputs)."""
    files = {part for parts in p.curate.mix.values() for part in parts if not SUBSET_NAME.fullmatch(part)}
    return sorted(repo_relative(f, root) for f in files)
