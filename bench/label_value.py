"""When clinician labels pay: selector - judge against the strength of the demo judge's biases.

    python bench/label_value.py [--root .] [--scales 0 1 2] [--seeds 0 1 2] [--keep 40] [--human-weight W]

For each scale s, the heuristic judge runs with ``s`` times the demo's default ``length_bias``,
``confidence_leniency`` and ``image_blindness`` (the last two capped at 1), then the pairs stage and the
select stage (the demo's selector params, ``selector.seed`` set to each of ``--seeds``), all in a temp
root that links the demo's sample, candidates, clinician labels and embeddings (run ``dvc repro embed
labels`` first; the clinicians and the candidates do not depend on the judge). Per scale it reports
held-out clinician agreement of selector - judge, averaged over seeds with a figure-bootstrap 95%
interval, and the hidden-truth flawed share of the top ``--keep`` % of all candidates ranked by the
selector and by the judge (their difference per seed, mean and range). Writes
``metrics/plots/label_value.csv`` (one row per scale), the per-seed runs beside it in
``bench/results/label_value_runs.csv``, and prints the rows as JSON. A bench, not a stage: the sweep
runs the judge, pairs and select three times each (minutes on 2 cores), too slow for ``make demo``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from vital.demo.truth_quality import TruthQuality
from vital.drops import Drops
from vital.io import read_jsonl, write_csv
from vital.judge import run as run_judge
from vital.pairs import run as run_pairs
from vital.params import load_params
from vital.paths import Paths
from vital.selector.data import read_pairs, read_scores_of_judge
from vital.selector.stacking import gap_over_seeds
from vital.selector.stage import run as run_select

LINKED = (
    "artifacts/sample.jsonl",
    "artifacts/candidates.jsonl",
    "artifacts/labels.jsonl",
    "artifacts/embeddings",
)
COLUMNS = [
    "bias_scale",
    "length_bias",
    "confidence_leniency",
    "image_blindness",
    "judge_heldout_agreement",
    "selector_heldout_agreement",
    "selector_minus_judge",
    "selector_minus_judge_ci_low",
    "selector_minus_judge_ci_high",
    "flawed_judge",
    "flawed_selector",
    "flawed_selector_minus_judge",
    "flawed_selector_minus_judge_min",
    "flawed_selector_minus_judge_max",
    "flawed_pool",
    "seeds",
]


def flawed_share(scores: dict[str, float], flawed: dict[str, float], keep: float) -> float:
    """Hidden-truth flawed share of the top ``keep`` % of all candidates by ``scores`` (ties by id)."""
    ranked = sorted(flawed, key=lambda c: (-scores.get(c, float("-inf")), c))
    top = ranked[: max(1, round(len(ranked) * keep / 100))]
    return float(np.mean([flawed[c] for c in top]))


def link_inputs(root: Path, tmp: Path) -> Paths:
    for rel in (*LINKED, "data"):
        src, dst = (root / rel).resolve(), tmp / rel
        if not src.exists():
            raise SystemExit(f"{src}: missing (run `dvc repro embed labels` in {root} first)")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(src, target_is_directory=src.is_dir())
    return Paths(tmp)


def sweep_one(
    root: Path, scale: float, seeds: list[int], keep: float, human_weight: float | None
) -> tuple[dict, list[dict]]:
    params = load_params(root / "params.yaml")
    default = params.judge
    judge_params = default.model_copy(
        update={
            "length_bias": default.length_bias * scale,
            "confidence_leniency": min(1.0, default.confidence_leniency * scale),
            "image_blindness": min(1.0, default.image_blindness * scale),
        }
    )
    with tempfile.TemporaryDirectory(prefix="label_value_") as tmp:
        paths = link_inputs(root, Path(tmp))
        run_judge(params.model_copy(update={"judge": judge_params}), paths)
        run_pairs(params.pairs, paths)
        judge = read_scores_of_judge(paths.judgments)
        quality = TruthQuality(paths)
        flawed = {
            c["id"]: quality.flags(c["pair_id"], c["conversations"])["flawed"]
            for c in read_jsonl(paths.candidates)
        }
        by_seed, runs = {}, []
        for seed in seeds:
            update = {"seed": seed, "seed_repeats": 1, "compare_weights": []}
            if human_weight is not None:
                update["human_weight"] = human_weight
            sp = params.selector.model_copy(update=update)
            m = run_select(sp, paths)
            scores = {r["candidate_id"]: r["score"] for r in read_jsonl(paths.scores)}
            by_seed[seed] = scores
            h = m["heldout_human"]
            runs.append(
                {
                    "bias_scale": scale,
                    "seed": seed,
                    "human_weight": m["human_weight"],
                    "judge_weight": m.get("judge_weight", ""),
                    "best_epoch": m["best_epoch"],
                    "judge_heldout_agreement": h["judge"]["agreement"],
                    "selector_heldout_agreement": h["selector"]["agreement"],
                    "selector_minus_judge": h["selector_minus_judge"]["difference"],
                    "flawed_judge": round(flawed_share(judge, flawed, keep), 4),
                    "flawed_selector": round(flawed_share(scores, flawed, keep), 4),
                }
            )
        index = {c: i for i, c in enumerate(by_seed[seeds[0]])}
        held = [p for p in read_pairs(paths.pairs, index, Drops()).get("heldout", []) if p.source == "human"]
        gap = gap_over_seeds(by_seed, judge, held, seeds[0])
    diffs = [r["flawed_selector"] - r["flawed_judge"] for r in runs]
    row = {
        "bias_scale": scale,
        "length_bias": judge_params.length_bias,
        "confidence_leniency": judge_params.confidence_leniency,
        "image_blindness": judge_params.image_blindness,
        "judge_heldout_agreement": runs[0]["judge_heldout_agreement"],
        "selector_heldout_agreement": round(
            float(np.mean([r["selector_heldout_agreement"] for r in runs])), 4
        ),
        "selector_minus_judge": gap["difference_mean"],
        "selector_minus_judge_ci_low": gap["ci95"][0],
        "selector_minus_judge_ci_high": gap["ci95"][1],
        "flawed_judge": runs[0]["flawed_judge"],
        "flawed_selector": round(float(np.mean([r["flawed_selector"] for r in runs])), 4),
        "flawed_selector_minus_judge": round(float(np.mean(diffs)), 4),
        "flawed_selector_minus_judge_min": round(min(diffs), 4),
        "flawed_selector_minus_judge_max": round(max(diffs), 4),
        "flawed_pool": round(float(np.mean(list(flawed.values()))), 4),
        "seeds": " ".join(map(str, seeds)),
    }
    return row, runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 2.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--keep", type=float, default=40.0, help="top-k%% of all candidates for the flawed share")
    ap.add_argument(
        "--human-weight",
        type=float,
        default=None,
        help="a fixed selector.human_weight (default: params.yaml's, e.g. auto, which trains one head per weight)",
    )
    ap.add_argument("--out", type=Path, default=Path("metrics/plots/label_value.csv"))
    ap.add_argument("--runs", type=Path, default=Path("bench/results/label_value_runs.csv"))
    args = ap.parse_args()
    start = time.perf_counter()
    rows, runs = [], []
    for scale in args.scales:
        row, scale_runs = sweep_one(args.root.resolve(), scale, args.seeds, args.keep, args.human_weight)
        rows.append(row)
        runs += scale_runs
    write_csv(args.out, COLUMNS, ([r[c] for c in COLUMNS] for r in rows))
    write_csv(args.runs, list(runs[0]), ([r[c] for c in runs[0]] for r in runs))
    print(
        json.dumps({"rows": rows, "keep_percent": args.keep, "wall_s": round(time.perf_counter() - start, 1)})
    )


if __name__ == "__main__":
    main()
