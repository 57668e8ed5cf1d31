"""Curate: rank candidates by selector score, write top-k% subsets and same-size random baselines.

Every claim that selection helps is measured against ``random<k>.json``: a seeded random subset of the
same pool and size (with large pools many selection methods barely beat it). Optional named mixtures
append external instruction files (e.g. LLaVA-Med's 10K/60K) as in the paper's 150K set.

It streams: candidates are read once and kept as (id, figure, domain, file offset); each written
record is read back from ``candidates.jsonl`` by its offset when its subset is written, subsets and
mixtures are written record by record, and external instruction files are streamed through
:mod:`vital.corpus` (``llava_conversations``). Memory grows with the number of candidates by a small
tuple each, not with their conversations (``bench/curate.py``).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vital.artifacts.candidates import CandidateFile, CandidateRef, candidate_refs
from vital.artifacts.sample import read_sample
from vital.artifacts.scores import read_scores
from vital.corpus import Malformed, reader
from vital.drops import Drops
from vital.io import RecordError, _atomic
from vital.licenses import PROVENANCE_FIELDS, UNKNOWN, license_counts
from vital.params import CurateParams, Params
from vital.paths import Paths, repo_relative
from vital.schema import DOMAINS, Candidate


def subset_name(kind: str, keep: int) -> str:
    return f"{kind}{keep}"


def write_json_list(path: Path, records: Iterable[Any]) -> int:
    """A JSON list written record by record; the bytes equal ``write_json(path, list, indent=None)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with _atomic(path) as f:
        f.write("[")
        for rec in records:
            f.write((", " if n else "") + json.dumps(rec, ensure_ascii=False))
            n += 1
        f.write("]\n")
    return n


def top_count(pool_size: int, keep: float) -> int:
    """How many of a pool of ``pool_size`` the top ``keep`` percent holds (rounded, at least one of a
    non-empty pool): the one top-k cut of curate, bakeoff and ``vital plan``."""
    return min(pool_size, max(1, round(keep / 100 * pool_size)))


def top_share(ranked: list, keep: float) -> list:
    """The first ``keep`` percent of ``ranked`` (:func:`top_count`)."""
    return ranked[: top_count(len(ranked), keep)]


def pool(
    cands: list[CandidateRef], scores: dict[str, float], policy: str, problems: Drops
) -> list[tuple[CandidateRef, float]]:
    """Scored candidates eligible for selection, best first (ties broken by id, so ranking is deterministic)."""
    scored = []
    for c in cands:
        if c.id not in scores:
            problems.add("unscored_candidate", c.id)
            continue
        scored.append((c, scores[c.id]))
    if policy == "best_per_figure":
        best: dict[str, tuple[CandidateRef, float]] = {}
        for c, s in scored:
            if c.pair_id not in best or (s, _neg(c.id)) > (best[c.pair_id][1], _neg(best[c.pair_id][0].id)):
                best[c.pair_id] = (c, s)
        scored = list(best.values())
    return sorted(scored, key=lambda cs: (-cs[1], cs[0].id))


def baseline_pool(
    cands: list[CandidateRef], scores: dict[str, float], policy: str, seed: int
) -> list[CandidateRef]:
    """The random baseline's pool: what selection chooses from, but drawn without the selector.

    ``best_per_figure`` takes one random candidate per figure, ``all`` every candidate. It depends only on
    the candidates and the seed, never on scores, so retraining the selector leaves ``random<k>.json``
    byte-identical and DVC does not retrain the baseline models.
    """
    rng = random.Random(seed)
    by_figure: dict[str, list[CandidateRef]] = defaultdict(list)
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


def read_provenance(path: Path, pair_ids: set[str], problems: Drops) -> dict[str, dict[str, str | None]]:
    """``pair_id -> {pmid, pmcid, license}`` of the sampled figures (``artifacts/sample.jsonl``) that have
    candidates; an empty dict when there is no sample (then every record's license is ``unknown``)."""
    if not path.is_file():
        return {}
    sample = read_sample(path, problems)
    return {pid: {k: getattr(sample[pid], k) for k in PROVENANCE_FIELDS} for pid in pair_ids if pid in sample}


def _article(prov: dict[str, dict[str, str | None]], pair_id: str) -> dict[str, str | None]:
    found = prov.get(pair_id) or {}
    return {
        "pmid": found.get("pmid"),
        "pmcid": found.get("pmcid"),
        "license": found.get("license") or UNKNOWN,
    }


def record(c: Candidate, score: float | None, article: dict[str, str | None] | None = None) -> dict[str, Any]:
    """LLaVA conversation JSON plus score (None for the random baseline), the figure's article
    (``pmid``, ``pmcid``, ``license``) and provenance."""
    return {
        **c.llava(),
        **(article or {"pmid": None, "pmcid": None, "license": UNKNOWN}),
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


def _valid_llava(rec: Any) -> bool:
    conv = rec.get("conversations") if isinstance(rec, dict) else None
    return (
        isinstance(conv, list)
        and len(conv) >= 2
        and all(isinstance(t, dict) and "from" in t and "value" in t for t in conv)
    )


def iter_instruction_file(path: Path, problems: Drops) -> Iterator[dict[str, Any]]:
    """An external LLaVA instruction file (JSON list as LLaVA-Med publishes it, or JSONL), streamed;
    a record that is not a LLaVA conversation is counted and listed with its file:line."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: instruction file for curate.mix not found")
    for where, rec in reader("llava_conversations", "instructions").read(path):
        if isinstance(rec, Malformed) or not _valid_llava(rec):
            problems.add("invalid_external_record", where)
            continue
        yield {**rec, "provenance": {"source": str(path)}}


def load_instruction_file(path: Path, problems: Drops) -> list[dict[str, Any]]:
    """:func:`iter_instruction_file` as a list (small files, tests)."""
    return list(iter_instruction_file(path, problems))


def mixture_records(
    name: str,
    parts: list[str],
    subsets: dict[str, Any],
    problems: Drops,
    by_part: dict[str, int],
    domains: Counter,
) -> Iterator[dict[str, Any]]:
    """Curated subsets (by name, e.g. ``top80``; a callable yielding its records) and external files,
    concatenated; a repeated id is kept once (the first). Fills ``by_part`` and ``domains`` as it goes."""
    seen: set[str] = set()
    for part in parts:
        recs = subsets[part]() if part in subsets else iter_instruction_file(Path(part), problems)
        added = 0
        for r in recs:
            rid = str(r.get("id"))
            if rid in seen:
                problems.add("duplicate_id_in_mixture", f"{name}: {rid}", part)
                continue
            seen.add(rid)
            domains[_domain_of(r)] += 1
            added += 1
            yield r
        by_part[part] = added


def build_mixture(
    name: str, parts: list[str], subsets: dict[str, list[dict]], problems: Drops
) -> tuple[list[dict], dict[str, int]]:
    """:func:`mixture_records` over in-memory subsets, as a list (small inputs, tests)."""
    by_part: dict[str, int] = {}
    named = {k: (lambda v=v: iter(v)) for k, v in subsets.items()}
    out = list(mixture_records(name, parts, named, problems, by_part, Counter()))
    return out, by_part


def run(cp: CurateParams, paths: Paths) -> dict[str, Any]:
    """The curate stage: ``artifacts/curated/{top,random}<k>.json`` (+ mixtures) and ``metrics/curate.json``."""
    problems = Drops()
    scores = read_scores(paths.scores, problems)
    cands = candidate_refs(paths.candidates, problems)
    ranked = pool(cands, scores, cp.policy, problems)
    if not ranked:
        raise RecordError(f"{paths.scores}: no candidate of {paths.candidates} has a score")
    shuffled = [(c, None) for c in baseline_pool(cands, scores, cp.policy, cp.seed)]
    n_candidates = len(cands)
    prov = read_provenance(paths.sample, {c.pair_id for c in cands}, problems)
    del cands
    source = CandidateFile(paths.candidates)
    sources: dict[str, list[tuple[CandidateRef, float | None]]] = {}
    report: dict[str, Any] = {}
    paths.curated.mkdir(parents=True, exist_ok=True)

    def records(name: str) -> Iterator[dict[str, Any]]:
        for ref, score in sources[name]:
            yield record(source.get(ref), score, _article(prov, ref.pair_id))

    try:
        for keep in sorted(set(cp.keep)):
            top = top_share(ranked, keep)
            n = len(top)
            for kind, chosen in (("top", top), ("random", shuffled[:n])):
                name = subset_name(kind, keep)
                sources[name] = chosen
                report[name] = {
                    "records": n,
                    "mean_score": round(sum(scores[c.id] for c, _ in chosen) / n, 4),
                    "by_domain": dict(sorted(Counter(c.domain for c, _ in chosen).items())),
                    "by_license": license_counts(_article(prov, c.pair_id) for c, _ in chosen),
                }
        for name in sources:
            write_json_list(paths.curated / f"{name}.json", records(name))
        mixtures = {}
        for name, parts in cp.mix.items():
            if name in sources:
                raise RecordError(f"curate.mix.{name}: name clashes with a curated subset")
            unknown = [
                p
                for p in parts
                if p.startswith(("top", "random")) and p not in sources and not Path(p).exists()
            ]
            if unknown:
                raise RecordError(
                    f"curate.mix.{name}: {unknown} are neither curated subsets ({sorted(sources)}) nor files"
                )
            by_part: dict[str, int] = {}
            domains: Counter = Counter()
            licenses: Counter = Counter()
            subsets = {k: (lambda k=k: records(k)) for k in sources}

            def counted(recs: Iterator[dict[str, Any]], licenses: Counter = licenses):
                for r in recs:
                    licenses.update(license_counts([r]))
                    yield r

            n = write_json_list(
                paths.curated / f"{name}.json",
                counted(mixture_records(name, parts, subsets, problems, by_part, domains)),
            )
            mixtures[name] = {
                "records": n,
                "by_part": by_part,
                "by_domain": dict(sorted(domains.items())),
                "by_license": dict(sorted(licenses.items())),
            }
    finally:
        source.close()
    metrics = {
        "policy": cp.policy,
        "candidates": n_candidates,
        "pool": len(ranked),
        "pool_by_domain": dict(sorted(Counter(c.domain for c, _ in ranked).items())),
        "licenses_from": str(paths.sample) if prov else "none (no sample: every license unknown)",
        "subsets": report,
        "mixtures": mixtures,
        **problems.metrics(),
    }
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


def headline(detail: dict) -> dict:
    return {"pool": detail.get("pool")}
