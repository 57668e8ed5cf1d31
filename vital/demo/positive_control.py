"""The downstream instrument's positive control: the same figures with conversations written from the
hidden truth (arm ``truth``) or with one wrong finding each (arm ``flawed``).

A downstream metric that cannot tell a model tuned on ``truth`` from one tuned on ``flawed``, with the same
budget, has no power to tell a curated subset from a random one either. ``flawed`` corrupts every
conversation the way the template generator's hallucinating candidates do (wrong presence, side, count,
size or modality: one error per conversation, asked about first), so the two arms differ only in what the
answers assert, never in their form or length range.
"""

from __future__ import annotations

from vital.bakeoff.control import ARMS
from vital.demo.template_generator import _hallucinate
from vital.paths import Paths
from vital.seeding import rng_for
from vital.world import load_truth
from vital.world.conversation import question_plan, write_planned

__all__ = ["ARMS", "arms_from_truth", "control_conversations"]


def arms_from_truth(records: list[dict], paths: Paths, seed: int) -> dict[str, list[dict]]:
    """``bakeoff.control: world``: both arms for ``records``, from the corpus's hidden truth."""
    truth = load_truth(paths.truth)
    return {arm: control_conversations(records, truth, arm, seed) for arm in ARMS}


def control_conversations(
    records: list[dict], truth: dict[str, dict], arm: str, seed: int = 0, max_rounds: int = 3
) -> list[dict]:
    """LLaVA conversation records (``id``, ``image``, ``conversations``) for ``records`` (sample records
    with ``pair_id`` and ``image``), one per figure; the rounds drawn per figure (1..``max_rounds``) are
    the same in both arms."""
    if arm not in ARMS:
        raise ValueError(f"arm {arm!r}: expected one of {', '.join(ARMS)}")
    out = []
    for rec in records:
        pid = rec["pair_id"]
        findings = truth.get(pid)
        if findings is None:
            raise KeyError(f"positive control: no hidden truth for figure {pid!r}")
        rounds = int(rng_for(seed, "control_rounds", pid).integers(1, max_rounds + 1))
        rng = rng_for(seed, "control", arm, pid)
        if arm == "truth":
            conv = write_planned(findings, question_plan(findings, rounds, rng), rng)
        else:
            wrong, exposed = _hallucinate(findings, rng)
            conv = write_planned(wrong, question_plan(wrong, rounds, rng, first=exposed), rng)
        out.append({"id": f"{pid}#{arm}", "image": rec["image"], "conversations": conv})
    return out
