"""Held-out clinician agreement against the number of clinician-labelled figures, random vs active order.

    python bench/active_labels.py [--root .] [--sizes 10 20 40 80 160 10000] [--seeds 0 1 2] [--human-weight 1]

Reads the select stage's inputs (``artifacts/embeddings``, ``pairs.jsonl``, ``judgments.jsonl``; run
``dvc repro select`` first) and simulates labelling rounds with ``vital.active.label_curve``: the judge's
pairs only, then the clinician rankings of 10, 20, ... training figures revealed in random order (one
shuffle per seed), in ``vital annotate --order uncertain`` order and in ``--order disagree`` order, the
rating head retrained each time on the frozen features. Writes every run to ``--out`` (a CSV that
``dvc plots show --x labelled_figures --y heldout_agreement`` draws) and the mean/std over seeds beside it
(``*_summary.csv``); prints the summary as JSON. Writes nothing else.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from vital.active import ACTIVE_ORDERS, label_curve, summarise
from vital.drops import Drops
from vital.embed.store import load_embeddings
from vital.params import load_params
from vital.paths import Paths
from vital.selector.data import read_pairs, read_scores_of_judge
from vital.selector.evidence import agreement
from vital.selector.features import embedding_features


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 40, 80, 160, 10_000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--orders", nargs="+", default=list(ACTIVE_ORDERS), choices=ACTIVE_ORDERS)
    ap.add_argument("--human-weight", type=float, default=1.0)
    ap.add_argument(
        "--judge-input", choices=["none", "residual"], default=None, help="default: params.yaml's"
    )
    ap.add_argument("--out", type=Path, default=Path("bench/results/active_labels.csv"))
    args = ap.parse_args()

    start = time.perf_counter()
    paths = Paths(args.root)
    sp = load_params(args.root / "params.yaml").selector
    emb = load_embeddings(paths.embeddings)
    index = emb.index()
    by_split = read_pairs(paths.pairs, index, Drops())
    judge = read_scores_of_judge(paths.judgments)
    rows = label_curve(
        embedding_features(emb),
        emb.candidate_ids,
        emb.pair_ids,
        by_split,
        judge,
        sp,
        args.sizes,
        args.orders,
        args.seeds,
        args.human_weight,
        args.judge_input or sp.judge_input,
    )
    held = [p for p in by_split.get("heldout", []) if p.source == "human"]
    judged = [p for p in held if p.winner in judge and p.loser in judge]
    summary = summarise(rows)
    write_csv(args.out, rows)
    write_csv(args.out.with_name(args.out.stem + "_summary.csv"), summary)
    print(
        json.dumps(
            {
                "heldout_human_pairs": len(held),
                "judge_agreement_on_them": round(agreement(judge, judged), 4),
                "human_weight": args.human_weight,
                "judge_input": args.judge_input or sp.judge_input,
                "seeds": args.seeds,
                "summary": summary,
                "wall_seconds": round(time.perf_counter() - start, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
