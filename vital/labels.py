"""The labels stage: clinicians' preferences over candidates, as ``Preference`` records.

Backends (registry, chosen by ``labels.backend``):

- ``simulated``: seeded tasks from the sample, ranked by simulated clinicians against the hidden truth;
  a share of tasks (``overlap``) goes to two clinicians so clinician-clinician agreement is measurable.
- ``files``: every ``data/labels/*.jsonl`` written by real clinicians (format: data/labels/README.md).
  Bad lines are skipped, counted and listed with file:line; real labels drop in without code changes.
  Files are append-only: the latest record of an annotator for a figure supersedes their earlier ones
  (a correction made in ``vital annotate``), so each annotator counts once per figure.

Agreement between clinicians is measured on the figures two or more of them ranked: pairwise (the share of
candidate pairs two clinicians order the same way) and Krippendorff's alpha (ordinal, on rank positions).

Both write ``artifacts/labels.jsonl`` and ``metrics/labels.json``.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter, defaultdict

import krippendorff
import numpy as np
from pydantic import ValidationError

from vital.artifacts.candidates import read_candidates
from vital.drops import Drops
from vital.io import RecordError, strip_bom, write_jsonl
from vital.params import LabelsParams, Params
from vital.paths import Paths
from vital.registry import Backend, choose
from vital.schema import Preference

MAX_LISTED = 50


class LabelsError(RecordError):
    """Label input that cannot produce any usable preference; the message names the file."""


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


def rank_positions(pref: Preference) -> dict[str, float]:
    """Candidate id -> rank position (1 = best); tied candidates share the mean of their positions."""
    pos = {c: float(i + 1) for i, c in enumerate(pref.ranking)}
    for group in pref.ties:
        members = [c for c in group if c in pos]
        if members:
            mean = sum(pos[c] for c in members) / len(members)
            pos.update(dict.fromkeys(members, mean))
    return pos


def clinician_agreement(prefs: list[Preference]) -> dict:
    """Agreement between different annotators on the figures two or more of them ranked.

    ``pairs``/``agreement``: candidate pairs ordered by two annotators and the share ordered the same way
    (tied pairs left out); ``krippendorff_alpha``: ordinal alpha over every (figure, candidate) unit ranked
    by two or more annotators, the value being its rank position (None when it is undefined: fewer than
    two such units, or a single rank value throughout).
    """
    by_figure: dict[str, dict[str, Preference]] = defaultdict(dict)
    for p in prefs:
        by_figure[p.pair_id][p.annotator] = p  # the latest per annotator and figure
    shared = {pid: group for pid, group in by_figure.items() if len(group) > 1}
    agree = total = 0
    for group in shared.values():
        for p, q in itertools.combinations(group.values(), 2):
            a, t = pairwise_agreement(p.ranking, q.ranking, (p.ties, q.ties))
            agree, total = agree + a, total + t
    annotators = sorted({a for group in shared.values() for a in group})
    units: list[dict[str, float]] = []
    for pid in sorted(shared):
        ranks = {a: rank_positions(p) for a, p in shared[pid].items()}
        for cid in sorted({c for r in ranks.values() for c in r}):
            unit = {a: r[cid] for a, r in ranks.items() if cid in r}
            if len(unit) > 1:
                units.append(unit)
    alpha = None
    if units:
        matrix = np.full((len(annotators), len(units)), np.nan)
        row = {a: i for i, a in enumerate(annotators)}
        for j, unit in enumerate(units):
            for a, v in unit.items():
                matrix[row[a], j] = v
        try:
            value = float(krippendorff.alpha(reliability_data=matrix, level_of_measurement="ordinal"))
            alpha = round(value, 4) if math.isfinite(value) else None
        except ValueError:
            alpha = None  # one rank value throughout: alpha is undefined
    return {
        "figures": len(shared),
        "annotators": annotators,
        "pairs": total,
        "agreement": round(agree / total, 4) if total else None,
        "krippendorff_alpha": alpha,
        "alpha_units": len(units),
    }


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
    tied = Counter(c for group in pref.ties for c in group)
    repeated = sorted(c for c, n in tied.items() if n > 1)
    if repeated:
        return None, "invalid_ties", f"id(s) {repeated} appear in more than one tie group (or twice in one)"
    small = [group for group in pref.ties if len(group) < 2]
    if small:
        return None, "invalid_ties", f"tie group(s) {small} need two or more candidates"
    changed = [c for c in pref.ranking if digests and c in pref.seen and pref.seen[c] != digests.get(c)]
    if changed:
        detail = (
            f"candidate(s) {changed} were regenerated after this ranking (their text differs); rank again"
        )
        return None, "candidate_changed", detail
    return pref, "", ""


def file_labels(cfg: LabelsParams, paths: Paths, problems: Drops) -> tuple[list[Preference], dict]:
    folder = paths.labels_dir
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    if not files:
        raise LabelsError(
            f"{folder}: no *.jsonl label files (labels.backend=files); see {folder / 'README.md'} for the format"
        )
    candidates = read_candidates(paths.candidates, problems)
    known = {c.id: c.pair_id for c in candidates}
    digests = {c.id: c.digest() for c in candidates}
    latest: dict[tuple[str, str], tuple[Preference, str]] = {}  # (annotator, figure) -> (record, where)
    superseded: list[str] = []
    empty: list[str] = []
    for path in files:
        n_lines = 0
        for lineno, raw_line in enumerate(path.read_bytes().split(b"\n"), 1):
            if not raw_line.strip():
                continue
            n_lines += 1
            where = f"{path}:{lineno}"
            try:
                line = strip_bom(raw_line.decode("utf-8"))
            except UnicodeDecodeError as e:
                problems.add("invalid_utf8", where, f"byte 0x{raw_line[e.start]:02x} at column {e.start + 1}")
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                problems.add("invalid_json", where, e.msg)
                continue
            pref, reason, detail = validate_preference(raw, known, digests)
            if pref is not None:
                key = (pref.annotator, pref.pair_id)
                before = latest.get(key)
                if before and (before[0].ranking, before[0].ties) == (pref.ranking, pref.ties):
                    reason, detail = (
                        "duplicate_label",
                        f"{pref.annotator} ranked {pref.ranking} at {before[1]}",
                    )
            if reason:
                problems.add(reason, where, detail)
                continue
            if key in latest:
                superseded.append(latest[key][1])
            latest[key] = (pref, where)
        if n_lines == 0:
            empty.append(str(path))
            problems.add("empty_file", str(path), "no label lines")
    prefs = [pref for pref, _ in latest.values()]
    if not prefs:
        first = "; ".join(f"{p['where']}: {p['reason']} ({p['detail']})" for p in problems.examples[:3])
        raise LabelsError(f"{folder}: no usable preference in {len(files)} label file(s). {first}")
    extra = {"files": [str(p) for p in files], "empty_files": empty}
    # corrections: an earlier ranking by the same annotator of the same figure, replaced by a later one
    extra["superseded"] = {"count": len(superseded), "where": superseded[:MAX_LISTED]}
    return prefs, extra


# each: (cfg, paths, problems) -> (preferences, extra metrics)
BACKENDS: dict[str, Backend] = {
    "simulated": Backend(
        "vital.demo.simulated_clinician:simulated_labels", reads=("data/corpus/truth.jsonl",)
    ),
    "files": Backend("vital.labels:file_labels", reads=("data/labels",)),
}


def run(cfg: LabelsParams, paths: Paths) -> dict:
    """Collect preferences with ``cfg.backend``; write labels and metrics; return the metrics."""
    backend = choose(BACKENDS, cfg.backend, "labels.backend").load()
    problems = Drops()
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
        **problems.metrics(),
    }
    return result


def run_stage(p: Params, paths: Paths) -> dict:
    result = run(p.labels, paths)
    print(
        f"labels ({result['backend']}): {result['labels']} preferences on {result['tasks']} figures, "
        f"{result['dropped']} skipped -> {paths.labels}"
    )
    return result


def headline(detail: dict) -> dict:
    return {"clinician_agreement": (detail.get("clinician_agreement") or {}).get("agreement")}
