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
from vital.io import read_json, write_csv
from vital.params import Params
from vital.paths import Paths, is_local, repo_relative
from vital.registry import choose
from vital.stats import evidence_path

HEADLINE = "flawed"


def subset_name(method: str, keep: int, seed: int | None = None) -> str:
    return f"{method}-{keep}" if seed is None else f"{method}-s{seed}-{keep}"


def stage_cost(paths: Paths, stage: str) -> dict[str, float]:
    """What an upstream stage spent: wall seconds, API dollars, clinician labels (from its evidence file)."""
    path = evidence_path(paths.root, stage)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (the bakeoff reads each method's upstream cost from it)")
    evidence = read_json(path)
    m = evidence.get("detail", {})
    out = {"seconds": float(evidence.get("wall_s", 0.0))}
    if "estimated_cost_usd" in m:
        out["api_usd"] = float(m["estimated_cost_usd"] or 0.0)
    if stage == "labels":
        out["labels"] = float(m.get("labels", 0))
        out["human_pairs"] = float(m.get("human_pairs", 0))
    return out


def bootstrap_gain(
    method: np.ndarray | list[np.ndarray],
    randoms: list[np.ndarray],
    resamples: int,
    seed: int = 0,
    members: list[list[str]] | None = None,
) -> list[float] | None:
    """95% CI of mean(method) - mean over seeds of mean(random), resampling each subset's records.

    ``method`` may be several subsets, one per training seed of the method (the selector), with ``members``
    their candidate ids: then each resample draws the candidates once for all of them (a candidate two seeds
    both kept weighs the same in both, so three equal subsets are as uncertain as one) and draws the seeds
    with replacement, so that the interval holds the training noise too (a record bootstrap of one random
    subset already mimics drawing another; retraining is not a record draw)."""
    subsets = method if isinstance(method, list) else [method]
    if resamples == 0 or not subsets or not all(len(x) for x in subsets) or not randoms:
        return None
    rng = np.random.default_rng(seed)
    if len(subsets) == 1:
        only = subsets[0]
        m = only[rng.integers(0, len(only), (resamples, len(only)))].mean(1)
    else:
        if members is None or len(members) != len(subsets):
            raise ValueError("bootstrap_gain: several method subsets need their candidate ids (members)")
        union = sorted(set().union(*members))
        position = {c: i for i, c in enumerate(union)}
        counts = rng.multinomial(len(union), np.full(len(union), 1 / len(union)), size=resamples)
        by_seed = []
        for flags, ids in zip(subsets, members, strict=True):
            weights = counts[:, [position[c] for c in ids]]
            total = weights.sum(1)
            by_seed.append(np.where(total > 0, (weights * flags).sum(1) / np.maximum(total, 1), flags.mean()))
        drawn = rng.integers(0, len(subsets), (resamples, len(subsets)))
        m = np.stack(by_seed)[drawn, np.arange(resamples)[:, None]].mean(1)
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
    method_seeds: dict[str, list[int | None]] | None = None,
    members: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Per method and size: each measure, its gain over random (mean, spread over random seeds, wins, CI).

    A method trained at several seeds (``method_seeds``, the selector) has one subset per seed: its value is
    the mean over them (``value_by_seed`` each), its gains are every seed against every random seed, and its
    CI resamples its seeds too (:func:`bootstrap_gain`)."""
    method_seeds = method_seeds or {}
    out: dict[str, Any] = {}
    for k in keep:
        randoms = [subset_name("random", k, s) for s in seeds]
        row: dict[str, Any] = {"random": {m: _spread([quality[r][m] for r in randoms]) for m in measures}}
        for method in methods:
            if method == "random":
                continue
            trained_at = method_seeds.get(method, [None])
            names = [subset_name(method, k, s) for s in trained_at]
            entry: dict[str, Any] = {}
            for m in measures:
                gains = [quality[n][m] - quality[r][m] for n in names for r in randoms]
                better = [(g < 0) if m in lower_is_better else (g > 0) for g in gains]
                values = [quality[n][m] for n in names]
                entry[m] = {
                    "value": values[0] if len(values) == 1 else round(float(np.mean(values)), 4),
                    **(
                        {"value_by_seed": dict(zip(map(str, trained_at), values, strict=True))}
                        if trained_at != [None]
                        else {}
                    ),
                    "minus_random": _spread(gains),
                    "wins": f"{sum(better)}/{len(better)}",
                    "ci95": bootstrap_gain(
                        [flags[n][m] for n in names],
                        [flags[r][m] for r in randoms],
                        resamples,
                        members=[members[n] for n in names] if members and len(names) > 1 else None,
                    ),
                }
            row[method] = entry
        out[str(k)] = row
    return out


def write_plot(
    path: Path, quality: dict[str, dict[str, Any]], keep: list[int], method_seeds: dict[str, list[int | None]]
) -> None:
    """``keep`` and one column per method (the headline share; a seeded method: its mean over seeds)."""

    def cell(m: str, k: int) -> float | str:
        names = [subset_name(m, k, s) for s in method_seeds[m]]
        values = [quality[n][HEADLINE] for n in names if HEADLINE in quality.get(n, {})]
        return round(float(np.mean(values)), 4) if values else ""

    write_csv(path, ["keep", *method_seeds], ([k, *(cell(m, k) for m in method_seeds)] for k in keep))


def run(params: Params, paths: Paths) -> dict[str, Any]:
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
    method_seeds: dict[str, list[int | None]] = {}
    members: dict[str, list[str]] = {}
    for method in bp.methods:
        spec = METHODS[method]
        t0 = time.process_time()
        method_seeds[method] = spec.seeds_of(pool_)
        for seed in method_seeds[method]:
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
                members[name] = [ref.id for ref, _ in chosen]
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
        "trained_at_seeds": {
            m: s for m, s in method_seeds.items() if METHODS[m].seeds is not None and s != [None]
        },
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
            {m: s for m, s in method_seeds.items() if METHODS[m].seeds is not None and s != [None]},
            members,
        )
    write_plot(paths.plots / "bakeoff_quality.csv", quality, bp.keep, method_seeds)
    return metrics


def run_stage(p: Params, paths: Paths) -> dict[str, Any]:
    return run(p, paths)


def ifd_model(p: Params, root: Path) -> list[str]:
    """``bakeoff.ifd_model`` when the ifd method runs and it is a local checkpoint."""
    if "ifd" not in p.bakeoff.methods or not is_local(p.bakeoff.ifd_model, root):
        return []
    return [repo_relative(p.bakeoff.ifd_model, root)]


def headline(detail: dict) -> dict:
    """Each method's headline quality minus random (mean over the random seeds) at the middle ``keep``."""
    keeps = detail.get("keep") or []
    if not keeps:
        return {}
    keep, measure = str(keeps[len(keeps) // 2]), detail.get("headline")
    by_method = (detail.get("vs_random") or {}).get(keep) or {}
    return {
        f"{measure}_minus_random_at_{keep}": {
            method: ((q.get(measure) or {}).get("minus_random") or {}).get("mean")
            for method, q in by_method.items()
            if method != "random"
        }
    }
