"""The bakeoff stage: every selection method of ``bakeoff.methods`` on the same candidate pool.

Each method rates the candidates (:mod:`vital.bakeoff.methods`); curate's per-figure policy
(``curate.policy``) and top-k% cut turn the ratings into ``artifacts/bakeoff/<method>-<k>.json`` (random:
``random-s<seed>-<k>.json``), LLaVA JSON with each record's provenance (method, keep, seed). The quality
scorer ``bakeoff.quality`` rates every subset; each method's gain over the random subsets of the same
size is reported with its spread over the random seeds, wins, and a bootstrap CI, beside the method's cost
(judge API spend, clinician labels, CPU seconds). Outputs: ``metrics/bakeoff.json`` and
``metrics/plots/bakeoff_quality.csv``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from vital.artifacts.candidates import CandidateRef, read_candidates
from vital.bakeoff.methods import METHODS, Pool, check_methods
from vital.bakeoff.quality import QUALITY
from vital.curate import pool, top_share, write_json_list
from vital.drops import Drops
from vital.io import read_json, write_csv, write_json
from vital.params import Params
from vital.paths import Paths, is_local, repo_relative
from vital.registry import choose

HEADLINE = "flawed"


def subset_name(method: str, keep: int, seed: int | None = None) -> str:
    return f"{method}-{keep}" if seed is None else f"{method}-s{seed}-{keep}"


def stage_cost(paths: Paths, stage: str) -> dict[str, float]:
    """What an upstream stage spent: wall seconds, API dollars, clinician labels (from its metrics file)."""
    path = paths.metric(stage)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (the bakeoff reads each method's upstream cost from it)")
    m = read_json(path)
    out = {"seconds": float(m.get("wall_s", 0.0))}
    if "estimated_cost_usd" in m:
        out["api_usd"] = float(m["estimated_cost_usd"] or 0.0)
    if stage == "labels":
        out["labels"] = float(m.get("labels", 0))
        out["human_pairs"] = float(m.get("human_pairs", 0))
    return out


def bootstrap_gain(
    method: np.ndarray, randoms: list[np.ndarray], resamples: int, seed: int = 0
) -> list[float] | None:
    """95% CI of mean(method) - mean over seeds of mean(random), resampling each subset's records."""
    if resamples == 0 or not len(method) or not randoms:
        return None
    rng = np.random.default_rng(seed)
    m = method[rng.integers(0, len(method), (resamples, len(method)))].mean(1)
    r = np.mean([x[rng.integers(0, len(x), (resamples, len(x)))].mean(1) for x in randoms], axis=0)
    lo, hi = np.percentile(m - r, [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)]


def _spread(values: list[float]) -> dict[str, Any]:
    a = np.asarray(values, dtype=float)
    return {
        "mean": round(float(a.mean()), 4),
        "std": round(float(a.std(ddof=1)) if len(a) > 1 else 0.0, 4),
        "values": [round(float(v), 4) for v in a],
    }


def compare(
    quality: dict[str, dict[str, Any]],
    flags: dict[str, dict[str, np.ndarray]],
    methods: list[str],
    keep: list[int],
    seeds: list[int],
    measures: tuple[str, ...],
    lower_is_better: tuple[str, ...],
    resamples: int,
) -> dict[str, Any]:
    """Per method and size: each measure, its gain over random (mean, spread over random seeds, wins, CI)."""
    out: dict[str, Any] = {}
    for k in keep:
        randoms = [subset_name("random", k, s) for s in seeds]
        row: dict[str, Any] = {"random": {m: _spread([quality[r][m] for r in randoms]) for m in measures}}
        for method in methods:
            if method == "random":
                continue
            name = subset_name(method, k)
            entry: dict[str, Any] = {}
            for m in measures:
                gains = [quality[name][m] - quality[r][m] for r in randoms]
                better = [(g < 0) if m in lower_is_better else (g > 0) for g in gains]
                entry[m] = {
                    "value": quality[name][m],
                    "minus_random": _spread(gains),
                    "wins": f"{sum(better)}/{len(better)}",
                    "ci95": bootstrap_gain(flags[name][m], [flags[r][m] for r in randoms], resamples),
                }
            row[method] = entry
        out[str(k)] = row
    return out


def write_plot(
    path: Path, quality: dict[str, dict[str, Any]], methods: list[str], keep: list[int], seeds
) -> None:
    """``keep`` and one column per method (the headline share; random: its mean over seeds)."""

    def cell(m: str, k: int) -> float | str:
        names = [subset_name(m, k, s) for s in seeds] if METHODS[m].seeded else [subset_name(m, k)]
        values = [quality[n][HEADLINE] for n in names if HEADLINE in quality.get(n, {})]
        return round(float(np.mean(values)), 4) if values else ""

    write_csv(path, ["keep", *methods], ([k, *(cell(m, k) for m in methods)] for k in keep))


def run(params: Params, paths: Paths) -> dict[str, Any]:
    start = time.perf_counter()
    bp = params.bakeoff
    check_methods(bp.methods)
    scorer = choose(QUALITY, bp.quality, "bakeoff.quality").load()(paths)
    drops = Drops()
    candidates = read_candidates(paths.candidates, drops)
    by_id = {c.id: c for c in candidates}
    refs = [CandidateRef(c.id, c.pair_id, c.domain, 0) for c in candidates]
    pool_ = Pool(paths, bp, candidates, drops)
    paths.bakeoff.mkdir(parents=True, exist_ok=True)
    for old in paths.bakeoff.glob("*.json"):  # a method or size dropped from params leaves no stale subset
        old.unlink()

    subsets: dict[str, dict[str, Any]] = {}
    quality: dict[str, dict[str, Any]] = {}
    flags: dict[str, dict[str, np.ndarray]] = {}
    cpu: dict[str, float] = {}
    measures = tuple(getattr(scorer, "measures", ()))
    for method in bp.methods:
        spec = METHODS[method]
        t0 = time.process_time()
        for seed in bp.seeds if spec.seeded else [None]:
            scores = spec.scorer(pool_, 0 if seed is None else seed)
            missing = [c.id for c in candidates if c.id not in scores]
            for cid in missing:
                drops.add(f"unscored_by_{method}", cid, "the method gave this candidate no score")
            ranked = pool(refs, scores, params.curate.policy, {})
            for k in bp.keep:
                name = subset_name(method, k, seed)
                chosen = top_share(ranked, k)
                records = []
                rows: list[dict[str, float]] = []
                for ref, score in chosen:
                    c = by_id[ref.id]
                    conv = [t.model_dump(by_alias=True) for t in c.conversations]
                    rows.append(scorer.flags(c.pair_id, conv))
                    records.append(
                        {
                            **c.llava(),
                            "domain": c.domain,
                            "score": round(float(score), 6),
                            "provenance": {
                                "pair_id": c.pair_id,
                                "candidate": c.id,
                                "generator": c.generator,
                                "method": method,
                                "keep": k,
                                "seed": seed,
                            },
                        }
                    )
                write_json_list(paths.bakeoff / f"{name}.json", records)
                subsets[name] = {"method": method, "keep": k, "seed": seed, "records": len(chosen)}
                flags[name] = {m: np.array([r[m] for r in rows], dtype=float) for m in measures}
                quality[name] = {m: round(float(flags[name][m].mean()), 4) for m in measures}
        cpu[method] = round(time.process_time() - t0, 2)

    upstream = {s: stage_cost(paths, s) for s in sorted({u for m in bp.methods for u in METHODS[m].uses})}
    costs = {}
    for method in bp.methods:
        uses = METHODS[method].uses
        costs[method] = {
            "cpu_seconds_scoring": cpu[method],
            "upstream_wall_seconds": round(sum(upstream[u]["seconds"] for u in uses), 2),
            "api_usd": round(sum(upstream[u].get("api_usd", 0.0) for u in uses), 4),
            "clinician_labels": int(sum(upstream[u].get("labels", 0) for u in uses)),
            "human_pairs": int(sum(upstream[u].get("human_pairs", 0) for u in uses)),
            "uses": list(uses),
        }
    metrics: dict[str, Any] = {
        "methods": {m: METHODS[m].doc for m in bp.methods},
        "quality_scorer": bp.quality,
        "headline": HEADLINE if measures else None,
        "lower_is_better": list(getattr(scorer, "lower_is_better", ())),
        "policy": params.curate.policy,
        "keep": bp.keep,
        "seeds": bp.seeds,
        "candidates": len(candidates),
        "params": {"ifd_model": bp.ifd_model, "ifd_max_length": bp.ifd_max_length}
        if "ifd" in bp.methods
        else {},
        "subsets": {n: {**s, **({"quality": quality[n]} if measures else {})} for n, s in subsets.items()},
        "cost": costs,
        **drops.metrics(),
    }
    if measures:
        metrics["vs_random"] = compare(
            quality,
            flags,
            bp.methods,
            bp.keep,
            bp.seeds,
            measures,
            tuple(getattr(scorer, "lower_is_better", ())),
            bp.bootstrap,
        )
    write_plot(paths.plots / "bakeoff_quality.csv", quality, bp.methods, bp.keep, bp.seeds)
    metrics["wall_s"] = round(time.perf_counter() - start, 2)
    write_json(paths.metric("bakeoff"), metrics)
    return metrics


def run_stage(p: Params, paths: Paths) -> dict[str, Any]:
    return run(p, paths)


def ifd_model(p: Params, root: Path) -> list[str]:
    """``bakeoff.ifd_model`` when the ifd method runs and it is a local checkpoint."""
    if "ifd" not in p.bakeoff.methods or not is_local(p.bakeoff.ifd_model, root):
        return []
    return [repo_relative(p.bakeoff.ifd_model, root)]
