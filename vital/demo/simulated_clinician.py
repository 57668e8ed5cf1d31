"""Offline stand-in for a clinician labelling candidates (human preference): the ``simulated`` clinician.

A clinician looks at the image, so it judges against the hidden truth: wrong findings weigh heavily,
hedging, leaning on the caption and truncated answers are penalised, and more correct detail is
mildly preferred. With probability ``error_rate`` per task it slips (swaps two neighbours in its
ranking); slips are seeded by annotator, so two annotators disagree now and then, measurably.
"""

from __future__ import annotations

from collections import defaultdict

from vital.artifacts.candidates import read_candidates
from vital.artifacts.sample import read_sample
from vital.demo.claims import check_claims, extract_claims, gpt_text, style_flags
from vital.drops import Drops
from vital.labels import pairwise_agreement
from vital.params import LabelsParams
from vital.paths import Paths
from vital.progress import progress
from vital.schema import Candidate, FigureRecord, Preference
from vital.seeding import rng_for, stable_seed
from vital.world import load_truth

TIE = 1e-9


def truth_utility(conversation: list[dict], truth: dict) -> float:
    """How good a conversation is against the hidden truth (higher is better); the world's quality metric."""
    correct, checked = check_claims(extract_claims(gpt_text(conversation)), truth)
    flags = style_flags(conversation)
    return (
        0.15 * correct
        - 1.0 * (checked - correct)
        - 0.6 * min(flags["hedges"], 2)
        - 0.6 * min(flags["leaks"], 2)
        - 0.5 * flags["truncated"]
        - 0.3 * flags["short"]
    )


def is_accurate(conversation: list[dict], truth: dict) -> bool:
    """No wrong finding, no hedging, leakage or truncation."""
    correct, checked = check_claims(extract_claims(gpt_text(conversation)), truth)
    flags = style_flags(conversation)
    return correct == checked and not (flags["hedges"] or flags["leaks"] or flags["truncated"])


def _conversation(c: Candidate) -> list[dict]:
    return [t.model_dump(by_alias=True) for t in c.conversations]


class SimulatedClinician:
    name = "simulated"

    def __init__(self, truth: dict[str, dict], annotator: str, error_rate: float = 0.05, seed: int = 0):
        if not 0 <= error_rate <= 1:
            raise ValueError(f"simulated clinician: error_rate must be in [0, 1] (got {error_rate})")
        self.truth = truth
        self.annotator = annotator
        self.error_rate = error_rate
        self.seed = seed

    def rank(self, record: FigureRecord, candidates: list[Candidate]) -> list[str]:
        """Candidate ids, best first."""
        return self.rank_with_ties(record, candidates)[0]

    def rank_with_ties(
        self, record: FigureRecord, candidates: list[Candidate]
    ) -> tuple[list[str], list[list[str]]]:
        """(ranking best first, groups of ids the clinician finds equally good)."""
        truth = self.truth.get(record.pair_id)
        if truth is None:
            raise KeyError(f"simulated clinician: no hidden truth for figure {record.pair_id!r}")
        if len(candidates) < 2:
            raise ValueError(f"simulated clinician: figure {record.pair_id} needs >= 2 candidates to rank")
        rng = rng_for(self.seed, "clinician", self.annotator, record.pair_id, *(c.id for c in candidates))
        utility = {c.id: truth_utility(_conversation(c), truth) for c in candidates}
        # equal utilities are ordered by an annotator-specific coin, like a human picking among equals
        jitter = {c.id: float(rng.random()) for c in candidates}
        ranking = sorted(utility, key=lambda cid: (-utility[cid], jitter[cid]))
        if rng.random() < self.error_rate:
            i = int(rng.integers(len(ranking) - 1))
            ranking[i], ranking[i + 1] = ranking[i + 1], ranking[i]
        return ranking, _ties(ranking, utility)


def _ties(ranking: list[str], utility: dict[str, float]) -> list[list[str]]:
    groups: dict[float, list[str]] = {}
    for cid in ranking:
        groups.setdefault(round(utility[cid] / TIE) * TIE, []).append(cid)
    return [g for g in groups.values() if len(g) > 1]


# ------------------------------------------------------------------ the labels stage's `simulated` backend
def _tasks(eligible: list[str], cfg: LabelsParams) -> list[str]:
    """The ``cfg.figures`` eligible figures with the smallest seeded hash (stable under additions)."""
    return sorted(eligible, key=lambda pid: stable_seed(cfg.seed, "labels", pid))[: cfg.figures]


def simulated_labels(cfg: LabelsParams, paths: Paths, problems: Drops) -> tuple[list[Preference], dict]:
    truth = load_truth(paths.truth)
    sample = read_sample(paths.sample, problems)
    candidates: dict[str, list[Candidate]] = defaultdict(list)
    for c in read_candidates(paths.candidates, problems, sample):
        candidates[c.pair_id].append(c)
    eligible = []
    for pid in sample:
        n = len(candidates.get(pid, []))
        if n < 2:
            problems.add("too_few_candidates", f"{paths.sample}:{pid}", f"{pid} has {n} candidate(s)")
        elif pid not in truth:
            problems.add("no_truth", f"{paths.sample}:{pid}", f"{pid} is not in {paths.truth}")
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
