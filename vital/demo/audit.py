"""How well the offline backends track the demo world's truth (a check of the world, not a stage).

    python -m vital.demo.audit [data_dir]

For every corpus figure it generates candidates with the template generator and reports the share of
fully accurate candidates, and pairwise accuracy against the truth-based utility of the heuristic judge
(overall and where the caption omits the side), of a simulated clinician, and the agreement of two
simulated clinicians. Pairs the truth rates equal are left out.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

from vital.demo.heuristic_judge import HeuristicJudge
from vital.demo.simulated_clinician import SimulatedClinician, is_accurate, truth_utility
from vital.demo.template_generator import TemplateGenerator
from vital.io import read_jsonl
from vital.progress import progress
from vital.schema import Candidate, FigureRecord
from vital.world import load_truth


class _Rate:
    def __init__(self):
        self.hit = self.n = 0

    def add(self, ok: bool) -> None:
        self.hit, self.n = self.hit + ok, self.n + 1

    def value(self) -> dict:
        return {"rate": round(self.hit / self.n, 4) if self.n else None, "pairs": self.n}


def audit(
    data: Path, candidates: int = 4, noise: float = 1.5, error_rate: float = 0.05, seed: int = 0
) -> dict:
    data = Path(data)
    truth = load_truth(data / "corpus" / "truth.jsonl")
    gen = TemplateGenerator(truth, seed)
    judge = HeuristicJudge(noise, seed)
    c1, c2 = (SimulatedClinician(truth, a, error_rate, seed) for a in ("clinician_1", "clinician_2"))
    accurate = _Rate()
    rates = {k: _Rate() for k in ("judge", "judge_caption_omits_side", "clinician", "clinician_vs_clinician")}
    records = [FigureRecord.model_validate(r) for r in read_jsonl(data / "corpus" / "figures.jsonl")]
    for rec in progress(records, "audit"):
        t = truth[rec.pair_id]
        convs = gen.generate(rec, candidates)
        cands = [
            Candidate(
                id=f"{rec.pair_id}#{k}",
                pair_id=rec.pair_id,
                image=rec.image,
                domain=t["domain"],
                conversations=c,
            )
            for k, c in enumerate(convs)
        ]
        util = [truth_utility(c, t) for c in convs]
        scores = [judge.score(rec, c)[0] for c in convs]
        for c in convs:
            accurate.add(is_accurate(c, t))
        for a, b in itertools.combinations(range(len(convs)), 2):
            if abs(util[a] - util[b]) < 1e-9:
                continue
            better = cands[a].id if util[a] > util[b] else cands[b].id
            if scores[a] != scores[b]:
                rates["judge"].add((scores[a] > scores[b]) == (util[a] > util[b]))
                if t["lesion"] and not t["caption_states_side"]:
                    rates["judge_caption_omits_side"].add((scores[a] > scores[b]) == (util[a] > util[b]))
            first = c1.rank(rec, [cands[a], cands[b]])[0]
            rates["clinician"].add(first == better)
            rates["clinician_vs_clinician"].add(first == c2.rank(rec, [cands[a], cands[b]])[0])
    return {
        "figures": len(records),
        "candidates": accurate.n,
        "accurate_fraction": round(accurate.hit / accurate.n, 4),
        **{k: r.value() for k, r in rates.items()},
    }


if __name__ == "__main__":
    print(json.dumps(audit(Path(sys.argv[1] if len(sys.argv) > 1 else "data")), indent=2))
