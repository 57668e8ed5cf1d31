"""vital's selection choices against BioMed-VITAL's (docs/fidelity.md rows 8-11) on the demo, one table.

    python bench/fidelity_selection.py [--seeds 0 1 2] [--only ABCDE]

Needs the demo's ``artifacts/`` up to ``pairs`` and ``embed`` (``dvc repro pairs embed``). Each config runs
the pairs and select stages (demo params plus the config's changes, ``compare_weights: []``) in a temporary
folder and reports held-out clinician agreement and the hidden-truth ``flawed`` share of the top 40% under
both curate policies (``best_per_figure``, vital's; ``all``, the reference's global sort), next to a random
40%. Configs D and E embed the candidates once more, as the paper head reads them (``text_mode: joint``,
``text_rounds: first``). Prints one JSON line per run, then the random baselines. Writes nothing in the repo.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from vital.demo.truth_quality import TruthQuality
from vital.embed import run as embed_run
from vital.io import read_jsonl
from vital.pairs import run as pairs_run
from vital.params import load_params
from vital.paths import Paths
from vital.selector import run as select_run

PAPER_HEAD = {
    "human_share": 0.4,
    "head": "paper",
    "hidden": 512,
    "dropout": 0.0,
    "epochs": 6,
    "batch_size": 64,
    "weight_decay": 0.0,
    "early_stopping": False,
}
# letter -> (name, pairs changes, selector changes, features)
CONFIGS = {
    "A": ("vital: within_figure, head vital, auto", {}, {}, "rounds"),
    "B": ("paper pairing, head vital, auto", {"model_pairing": "paper"}, {}, "rounds"),
    "C": ("paper pairing + share 0.4, head vital", {"model_pairing": "paper"}, {"human_share": 0.4}, "rounds"),
    "D": ("paper pairing + share 0.4 + head paper, lr 1e-5", {"model_pairing": "paper"}, PAPER_HEAD | {"lr": 1e-5}, "joint"),
    "E": ("as D, lr 1e-3", {"model_pairing": "paper"}, PAPER_HEAD | {"lr": 1e-3}, "joint"),
}  # fmt: skip


def flawed_share(
    scores: dict[str, float], cands: dict[str, dict], scorer, policy: str, keep: float = 0.4
) -> float:
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    if policy == "best_per_figure":
        best: dict[str, tuple[str, float]] = {}
        for cid, s in ranked:
            best.setdefault(cands[cid]["pair_id"], (cid, s))
        ranked = sorted(best.values(), key=lambda kv: (-kv[1], kv[0]))
    top = ranked[: max(1, round(keep * len(ranked)))]
    return sum(scorer.flags(cands[c]["pair_id"], cands[c]["conversations"])["flawed"] for c, _ in top) / len(
        top
    )


def workspace(root: Path, repo: Path, embeddings: Path | None) -> Paths:
    root.mkdir()
    for rel in ("data", "models"):
        (root / rel).symlink_to(repo / rel)
    (root / "artifacts").mkdir()
    for name in ("judgments.jsonl", "labels.jsonl", "candidates.jsonl", "sample.jsonl"):
        shutil.copy(repo / "artifacts" / name, root / "artifacts" / name)
    if embeddings is not None:
        (root / "artifacts" / "embeddings").symlink_to(embeddings)
    return Paths(root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--only", default="".join(CONFIGS))
    args = ap.parse_args()
    repo = args.root.resolve()
    demo = load_params(repo / "params.yaml")
    scorer = TruthQuality(Paths(repo))
    cands = {c["id"]: c for c in read_jsonl(repo / "artifacts" / "candidates.jsonl")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        joint = None
        if set(args.only) & {"D", "E"}:
            paths = workspace(tmp / "joint", repo, None)
            ep = demo.embed.model_copy(
                update={"text_mode": "joint", "text_rounds": "first", "side_features": False}
            )
            embed_run(ep, paths, force=True)
            joint = paths.embeddings
        for seed in args.seeds:
            for letter in args.only:
                name, pp, sp, features = CONFIGS[letter]
                start = time.perf_counter()
                emb = repo / "artifacts" / "embeddings" if features == "rounds" else joint
                paths = workspace(tmp / f"{letter}{seed}", repo, emb)
                pm = pairs_run(demo.pairs.model_copy(update={**pp, "seed": seed}), paths)
                m = select_run(
                    demo.selector.model_copy(update={**sp, "seed": seed, "compare_weights": []}), paths
                )
                scores = {r["candidate_id"]: r["score"] for r in read_jsonl(paths.scores)}
                row = {
                    "config": f"{letter} {name}",
                    "seed": seed,
                    "model_pairs_train": m["pairs_train"]["model"],
                    "cross_figure_pairs": pm.get("cross_figure_model_pairs"),
                    "human_pairs_train": m["pairs_train"]["human"],
                    "human_weight": round(m["human_weight"], 3),
                    "human_share_of_weight": m["human_share_of_weight"],
                    "heldout_clinician_agreement": m["heldout_human"]["selector"]["agreement"],
                    "judge_agreement": m["heldout_human"]["judge"]["agreement"],
                    **{
                        f"flawed_top40_{policy}": round(flawed_share(scores, cands, scorer, policy), 4)
                        for policy in ("best_per_figure", "all")
                    },
                    "epochs_run": m["epochs_run"],
                    "s": round(time.perf_counter() - start, 1),
                }
                print(json.dumps(row), flush=True)
    for policy in ("best_per_figure", "all"):
        shares = []
        for seed in (0, 1, 2):
            rng = random.Random(seed)
            shares.append(flawed_share({c: rng.random() for c in cands}, cands, scorer, policy))
        print(
            json.dumps({"config": f"random 40% ({policy})", "flawed_by_seed": [round(s, 4) for s in shares]})
        )


if __name__ == "__main__":
    main()
