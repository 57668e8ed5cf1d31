"""Selection methods compared by the bakeoff: name -> scorer ``(pool, seed) -> {candidate_id: score}``.

Every method rates candidates of the same pool (``artifacts/candidates.jsonl``); higher is better. The
stage then applies curate's per-figure policy and keeps the top k% of each method's ranking, exactly as
curate does with the selector's scores. Adding a method is one entry in :data:`METHODS` and one name in
``bakeoff.methods`` (params.yaml).

``uses`` names the upstream stages a method needs (for its cost: API spend of the judge, clinician labels,
CPU seconds of those stages, see :mod:`vital.bakeoff.cost`).
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from vital.artifacts import scores as artifact_scores
from vital.drops import Drops
from vital.io import RecordError, read_jsonl
from vital.params import BakeoffParams, ParamsError, unknown_name
from vital.paths import Paths
from vital.schema import Candidate


@dataclass
class Pool:
    """The candidate pool and the upstream outputs the methods read, each loaded on first use."""

    paths: Paths
    bp: BakeoffParams
    candidates: list[Candidate]
    drops: Drops = field(default_factory=Drops)  # the upstream lines the methods could not read

    @cached_property
    def ids(self) -> set[str]:
        return {c.id for c in self.candidates}

    @cached_property
    def embeddings(self):
        from vital.embed.store import load_embeddings

        return load_embeddings(self.paths.embeddings)

    def _by_seed(self, field: str, required: bool) -> dict[int, dict[str, float]]:
        """``seed -> {candidate_id: score}`` from ``field`` of ``scores_by_weight.jsonl`` (select writes the
        chosen head's ``scores_by_seed`` always, ``weight0_by_seed`` when it trains weight 0 over seeds)."""
        path = self.paths.scores_by_weight
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (run the select stage first)")
        out: dict[int, dict[str, float]] = {}
        for i, rec in enumerate(read_jsonl(path), 1):
            by_seed, cid = rec.get(field), rec.get("candidate_id")
            if by_seed is None and not required:
                return {}
            if not isinstance(by_seed, dict) or not by_seed or not isinstance(cid, str):
                raise RecordError(
                    f"{path}:{i}: needs candidate_id and {field} (rerun select: the bakeoff rates the "
                    "selector over its training seeds)"
                )
            for seed, value in by_seed.items():
                if not isinstance(value, int | float):
                    raise RecordError(f"{path}:{i}: {field}[{seed!r}] is not a number")
                out.setdefault(int(seed), {})[cid] = float(value)
        return out

    @cached_property
    def selector_by_seed(self) -> dict[int, dict[str, float]]:
        """The chosen selector head at each seed select trained it."""
        return self._by_seed("scores_by_seed", required=True)

    @cached_property
    def weight0_by_seed(self) -> dict[int, dict[str, float]]:
        """The weight-0 head at each seed select trained it; empty when it trained one."""
        return self._by_seed("weight0_by_seed", required=False)


# ------------------------------------------------------------------ the scorers
def random_scores(pool: Pool, seed: int) -> dict[str, float]:
    """A seeded uniform draw: per figure one random candidate, figures in random order (curate's baseline)."""
    rng = _random.Random(seed)
    return {c.id: rng.random() for c in sorted(pool.candidates, key=lambda c: c.id)}


def answer_words(c: Candidate) -> int:
    return sum(len(t.value.split()) for t in c.conversations if t.from_ == "gpt")


def length_scores(pool: Pool, seed: int) -> dict[str, float]:
    """Words in the answers (the gpt turns): longer first (Zhao et al.'s strong cheap baseline)."""
    return {c.id: float(answer_words(c)) for c in pool.candidates}


def clip_scores(pool: Pool, seed: int) -> dict[str, float]:
    """DataComp-style CLIP score: cosine of the stored image and text features of each candidate."""
    emb = pool.embeddings
    img = emb.image / np.maximum(np.linalg.norm(emb.image, axis=1, keepdims=True), 1e-12)
    txt = emb.text / np.maximum(np.linalg.norm(emb.text, axis=1, keepdims=True), 1e-12)
    cos = (img * txt).sum(axis=1)
    return {cid: float(s) for cid, s in zip(emb.candidate_ids, cos, strict=True)}


def judge_scores(pool: Pool, seed: int) -> dict[str, float]:
    """AlpaGasus-style filtering: the judge's 0-10 rubric score alone."""
    return artifact_scores.judge_scores(pool.paths.judgments, pool.drops)


def selector_scores(pool: Pool, seed: int) -> dict[str, float]:
    """The selector as configured, trained at ``seed`` (one of select's ``selector.seed_repeats`` seeds; the
    first is ``artifacts/scores.jsonl``, what curate ranks by)."""
    return pool.selector_by_seed[seed]


def selector_seeds(pool: Pool) -> list[int]:
    return sorted(pool.selector_by_seed)


def selector_w0_scores(pool: Pool, seed: int) -> dict[str, float]:
    """The selector head trained on judge pairs only (``human_weight: 0``), from ``scores_by_weight.jsonl``:
    at ``seed`` where select trained it over seeds, else its one head."""
    if pool.weight0_by_seed:
        return pool.weight0_by_seed[seed]
    return artifact_scores.read_scores(pool.paths.scores_by_weight, pool.drops, field="scores", key="0")


def selector_w0_seeds(pool: Pool) -> list[int | None]:
    return sorted(pool.weight0_by_seed) or [None]


def ifd_scores(pool: Pool, seed: int) -> dict[str, float]:
    """Superfiltering-style instruction-following difficulty (see :mod:`vital.bakeoff.ifd`)."""
    from vital.bakeoff.ifd import ifd_scores as score

    return score(pool.candidates, pool.bp)


@dataclass(frozen=True)
class Method:
    scorer: Callable[[Pool, int], dict[str, float]]
    uses: tuple[str, ...] = ()  # upstream stages whose outputs (and cost) it relies on
    seeded: bool = False  # one subset per bakeoff seed (else one subset)
    doc: str = ""
    # one subset per seed it names (the seeds a trained method was trained at), each rated on its own
    seeds: Callable[[Pool], list[int | None]] | None = None

    def seeds_of(self, pool: Pool) -> list[int | None]:
        """The seeds of this method's subsets: its training seeds, the bakeoff seeds, or one unseeded subset."""
        if self.seeds is not None:
            return list(self.seeds(pool))
        return list(pool.bp.seeds) if self.seeded else [None]


METHODS: dict[str, Method] = {
    "random": Method(random_scores, seeded=True, doc="same-size random subset, one per seed"),
    "length": Method(length_scores, doc="longest answers (words in the gpt turns)"),
    "clip": Method(clip_scores, uses=("embed",), doc="CLIP image-text cosine of the stored features"),
    "judge": Method(judge_scores, uses=("judge",), doc="judge rubric score alone (AlpaGasus-style)"),
    "selector_w0": Method(
        selector_w0_scores,
        uses=("embed", "judge", "pairs", "select"),
        doc="selector head trained on judge pairs only (human_weight 0), one subset per training seed",
        seeds=selector_w0_seeds,
    ),
    "selector": Method(
        selector_scores,
        uses=("embed", "judge", "labels", "pairs", "select"),
        doc="the selector as configured, one subset per training seed (selector.seed_repeats)",
        seeds=selector_seeds,
    ),
    "ifd": Method(
        ifd_scores, doc="instruction-following difficulty under the base LLM (Superfiltering-style)"
    ),
}


def check_methods(names: list[str]) -> None:
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ParamsError(unknown_name("bakeoff.methods", unknown, METHODS))
    if "random" not in names:
        raise ParamsError("bakeoff.methods: must include random (every gain is measured against it)")
