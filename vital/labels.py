"""The labels stage: clinicians' preferences over candidates, as ``Preference`` records.

Backends (registry, chosen by ``labels.backend``):

- ``simulated``: seeded tasks from the sample, ranked by simulated clinicians against the hidden truth;
  a share of tasks (``overlap``) goes to two clinicians so clinician-clinician agreement is measurable.
- ``files``: every ``data/labels/*.jsonl`` written by real clinicians (format: data/labels/README.md).
  Bad lines are skipped, counted and listed with file:line; real labels drop in without code changes.

Both write ``artifacts/labels.jsonl`` and ``metrics/labels.json``.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from vital.io import read_jsonl, write_json, write_jsonl
from vital.params import LabelsParams
from vital.paths import Paths
from vital.progress import progress
from vital.schema import Candidate, FigureRecord, Preference
from vital.seeding import rng_for, stable_seed

MAX_LISTED = 50


class LabelsError(ValueError):
    """Label input that cannot produce any usable preference; the message names the file."""


class Problems:
    def __init__(self):
        self.counts: Counter[str] = Counter()
        self.listed: list[dict] = []

    def add(self, where: str, reason: str, detail: str = "") -> None:
        self.counts[reason] += 1
        if len(self.listed) < MAX_LISTED:
            self.listed.append({"where": where, "reason": reason, "detail": detail})


def _load_candidates(path: Path, problems: Problems) -> dict[str, list[Candidate]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: candidates not found (run the generate stage first)")
    by_figure: dict[str, list[Candidate]] = defaultdict(list)
    for i, raw in enumerate(read_jsonl(path), 1):
        try:
            c = Candidate.model_validate(raw)
        except ValidationError as e:
            problems.add(f"{path}:{i}", "invalid_candidate", str(e.errors()[0]["msg"]))
            continue
        by_figure[c.pair_id].append(c)
    return by_figure


def _load_sample(path: Path) -> dict[str, FigureRecord]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: sample not found (run the sample stage first)")
    return {r["pair_id"]: FigureRecord.model_validate(r) for r in read_jsonl(path)}


def pairwise_agreement(a: list[str], b: list[str], ties: tuple[list[list[str]], ...] = ()) -> tuple[int, int]:
    """(candidate pairs both rankings order the same way, pairs ranked by both); tied pairs are left out."""
    tied = {frozenset(p) for group in itertools.chain(*ties) for p in itertools.combinations(group, 2)}
    pos_a = {c: i for i, c in enumerate(a)}
    pos_b = {c: i for i, c in enumerate(b)}
    agree = total = 0
    for x, y in itertools.combinations([c for c in a if c in pos_b], 2):
        if frozenset((x, y)) in tied:
            continue
        total += 1
        agree += (pos_a[x] < pos_a[y]) == (pos_b[x] < pos_b[y])
    return agree, total


def clinician_agreement(prefs: list[Preference]) -> dict:
    """Pairwise agreement between different annotators on the same candidates (overlap tasks)."""
    by_figure: dict[str, list[Preference]] = defaultdict(list)
    for p in prefs:
        by_figure[p.pair_id].append(p)
    agree = total = 0
    for group in by_figure.values():
        for p, q in itertools.combinations(group, 2):
            if p.annotator != q.annotator:
                a, t = pairwise_agreement(p.ranking, q.ranking, (p.ties, q.ties))
                agree, total = agree + a, total + t
    return {"pairs": total, "agreement": round(agree / total, 4) if total else None}


# ------------------------------------------------------------------ simulated clinicians
def _tasks(eligible: list[str], cfg: LabelsParams) -> list[str]:
    """The ``cfg.figures`` eligible figures with the smallest seeded hash (stable under additions)."""
    return sorted(eligible, key=lambda pid: stable_seed(cfg.seed, "labels", pid))[: cfg.figures]


def _simulated(cfg: LabelsParams, paths: Paths, problems: Problems) -> tuple[list[Preference], dict]:
    from vital.demo.simulated_clinician import SimulatedClinician, truth_utility  # demo only
    from vital.world import load_truth

    truth = load_truth(paths.truth)
    sample = _load_sample(paths.sample)
    candidates = _load_candidates(paths.candidates, problems)
    eligible = []
    for pid in sample:
        n = len(candidates.get(pid, []))
        if n < 2:
            problems.add(f"{paths.sample}:{pid}", "too_few_candidates", f"{pid} has {n} candidate(s)")
        elif pid not in truth:
            problems.add(f"{paths.sample}:{pid}", "no_truth", f"{pid} is not in {paths.truth}")
        else:
            eligible.append(pid)
    tasks = _tasks(eligible, cfg)
    annotators = [f"clinician_{i + 1}" for i in range(cfg.clinicians)]
    clinicians = {a: SimulatedClinician(truth, a, cfg.error_rate, cfg.seed) for a in annotators}
    n_overlap = round(cfg.overlap * len(tasks)) if cfg.clinicians > 1 else 0
    overlapped = set(sorted(tasks, key=lambda pid: stable_seed(cfg.seed, "overlap", pid))[:n_overlap])
    prefs: list[Preference] = []
    short = 0
    truth_agree = truth_total = 0
    for pid in progress(tasks, "labels: simulated clinicians"):
        rng = rng_for(cfg.seed, "task", pid)
        pool = candidates[pid]
        shown = [pool[int(i)] for i in rng.permutation(len(pool))[: cfg.per_task]]
        short += len(shown) < cfg.per_task
        who = [annotators[int(i)] for i in rng.permutation(len(annotators))[: 2 if pid in overlapped else 1]]
        utility = {
            c.id: truth_utility([t.model_dump(by_alias=True) for t in c.conversations], truth[pid])
            for c in shown
        }
        ideal = sorted(utility, key=lambda cid: -utility[cid])
        for annotator in who:
            ranking, ties = clinicians[annotator].rank_with_ties(sample[pid], shown)
            prefs.append(
                Preference(pair_id=pid, annotator=annotator, ranking=ranking, ties=ties, source="simulated")
            )
            a, t = pairwise_agreement(ranking, ideal, (ties,))
            truth_agree, truth_total = truth_agree + a, truth_total + t
    extra = {
        "requested_tasks": cfg.figures,
        "eligible_figures": len(eligible),
        "tasks_with_fewer_candidates": short,
        "per_task": cfg.per_task,
        "agreement_with_truth": round(truth_agree / truth_total, 4) if truth_total else None,
    }
    return prefs, extra


# ------------------------------------------------------------------ real label files
def validate_preference(
    raw: object, known: dict[str, str], digests: dict[str, str] | None = None
) -> tuple[Preference | None, str, str]:
    """(preference, reason, detail); reason is '' when the line is usable.

    ``known``: candidate id -> figure; ``digests``: candidate id -> ``Candidate.digest()``, checked
    against the ranking's ``seen`` digests (a candidate regenerated after it was ranked makes the
    ranking stale: its id now names other text).
    """
    if not isinstance(raw, dict):
        return None, "invalid_record", f"expected a JSON object, got {type(raw).__name__}"
    ranking = raw.get("ranking")
    if isinstance(ranking, list) and len(ranking) < 2:
        return None, "ranking_too_short", f"ranking has {len(ranking)} candidate(s); at least 2 are needed"
    try:
        pref = Preference.model_validate(raw)
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        return None, "invalid_record", errs
    dupes = sorted({c for c in pref.ranking if pref.ranking.count(c) > 1})
    if dupes:
        return None, "duplicate_candidate", f"ranking repeats {dupes}"
    unknown = [c for c in pref.ranking if c not in known]
    if unknown:
        return None, "unknown_candidate", f"candidate id(s) {unknown} not in the candidates file"
    other = [c for c in pref.ranking if known[c] != pref.pair_id]
    if other:
        return None, "wrong_figure", f"candidate id(s) {other} do not belong to figure {pref.pair_id}"
    stray = [c for group in pref.ties for c in group if c not in pref.ranking]
    if stray:
        return None, "invalid_ties", f"tied id(s) {stray} are not in the ranking"
    changed = [c for c in pref.ranking if digests and c in pref.seen and pref.seen[c] != digests.get(c)]
    if changed:
        detail = (
            f"candidate(s) {changed} were regenerated after this ranking (their text differs); rank again"
        )
        return None, "candidate_changed", detail
    return pref, "", ""


def _files(cfg: LabelsParams, paths: Paths, problems: Problems) -> tuple[list[Preference], dict]:
    folder = paths.labels_dir
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    if not files:
        raise LabelsError(
            f"{folder}: no *.jsonl label files (labels.backend=files); see {folder / 'README.md'} for the format"
        )
    candidates = [c for cs in _load_candidates(paths.candidates, problems).values() for c in cs]
    known = {c.id: c.pair_id for c in candidates}
    digests = {c.id: c.digest() for c in candidates}
    prefs: list[Preference] = []
    seen: set[tuple] = set()
    empty: list[str] = []
    for path in files:
        n_lines = 0
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                n_lines += 1
                where = f"{path}:{lineno}"
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as e:
                    problems.add(where, "invalid_json", e.msg)
                    continue
                pref, reason, detail = validate_preference(raw, known, digests)
                if pref is not None:
                    key = (pref.annotator, pref.pair_id, tuple(pref.ranking))
                    if key in seen:
                        reason, detail = "duplicate_label", f"{pref.annotator} ranked {pref.ranking} before"
                    seen.add(key)
                if reason:
                    problems.add(where, reason, detail)
                    continue
                prefs.append(pref)
        if n_lines == 0:
            empty.append(str(path))
            problems.add(str(path), "empty_file", "no label lines")
    if not prefs:
        first = "; ".join(f"{p['where']}: {p['reason']} ({p['detail']})" for p in problems.listed[:3])
        raise LabelsError(f"{folder}: no usable preference in {len(files)} label file(s). {first}")
    return prefs, {"files": [str(p) for p in files], "empty_files": empty}


Backend = Callable[[LabelsParams, Paths, Problems], tuple[list[Preference], dict]]
BACKENDS: dict[str, Backend] = {"simulated": _simulated, "files": _files}


def run(cfg: LabelsParams, paths: Paths) -> dict:
    """Collect preferences with ``cfg.backend``; write labels and metrics; return the metrics."""
    start = time.perf_counter()
    try:
        backend = BACKENDS[cfg.backend]
    except KeyError:
        raise ValueError(f"labels.backend={cfg.backend!r}: expected one of {sorted(BACKENDS)}") from None
    problems = Problems()
    prefs, extra = backend(cfg, paths, problems)
    write_jsonl(paths.labels, prefs)
    tasks = {p.pair_id for p in prefs}
    by_annotator = Counter(p.annotator for p in prefs)
    per_figure = Counter(p.pair_id for p in prefs)
    result = {
        "backend": cfg.backend,
        "labels": len(prefs),
        "tasks": len(tasks),
        "annotators": dict(sorted(by_annotator.items())),
        "overlap_tasks": sum(1 for pid, n in per_figure.items() if n > 1),
        "human_pairs": sum(len(p.ranking) * (len(p.ranking) - 1) // 2 for p in prefs),
        "clinician_agreement": clinician_agreement(prefs),
        **extra,
        "skipped": sum(problems.counts.values()),
        "skipped_by_reason": dict(sorted(problems.counts.items())),
        "problems": problems.listed,
        "wall_s": round(time.perf_counter() - start, 3),
    }
    write_json(paths.metric("labels"), result)
    return result
