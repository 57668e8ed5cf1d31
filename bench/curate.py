"""Curating at BioMed-VITAL's largest mixture size: peak memory and time of the curate stage.

    python bench/curate.py [--figures 37500] [--candidates 4] [--external 75000] [--dir /tmp/vital-bench-curate]

Builds (once) synthetic generate/select outputs: ``--figures`` x ``--candidates`` scored candidates with
three-round conversations of realistic length (~1.5 KB each), and an external LLaVA-Med-style instruction
JSON list of ``--external`` records. The curate stage then writes top/random 10/40/80/90% subsets (policy
``all``) and a mixture ``mix210k`` = top90 + the external file (135K + 75K = 210K records by default).
Each in a fresh process so peak RSS is its own:

- baseline: the candidates file and the external file read with plain ``json`` (streamed, nothing kept)
  and the mixture's size written once with ``json.dump`` of a list held in memory (what a non-streaming
  writer needs);
- curate: ``vital.curate.run``.

Prints one JSON object: wall time and peak RSS of both and their ratios.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from _child import child  # bench/_child.py (bench/ is sys.path[0] when run as a script)

DOMAINS = ("chest_xray", "ct_scan", "mri", "histology", "gross")
WORDS = [
    "the",
    "image",
    "shows",
    "a",
    "lesion",
    "in",
    "the",
    "left",
    "right",
    "upper",
    "lower",
    "lobe",
    "with",
    "contrast",
    "enhancement",
    "and",
    "margins",
]


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "."


def _conv(rng: random.Random) -> list[dict]:
    turns = [
        {"from": "human", "value": "<image>\n" + _text(rng, 10)},
        {"from": "gpt", "value": _text(rng, 70)},
    ]
    for _ in range(2):
        turns += [{"from": "human", "value": _text(rng, 10)}, {"from": "gpt", "value": _text(rng, 70)}]
    return turns


def build(root: Path, figures: int, k: int, external: int) -> Path:
    rng = random.Random(0)
    art = root / "artifacts"
    art.mkdir(parents=True, exist_ok=True)
    with (art / "candidates.jsonl").open("w") as cf, (art / "scores.jsonl").open("w") as sf:
        for f in range(figures):
            pid = f"PMC{f}_F1"
            for c in range(k):
                cid = f"{pid}#{c}"
                rec = {
                    "id": cid,
                    "pair_id": pid,
                    "image": f"images/{pid}.jpg",
                    "domain": DOMAINS[f % 5],
                    "conversations": _conv(rng),
                    "generator": {"backend": "openai", "model": "gpt-4o", "prompt": "0123456789abcdef"},
                }
                cf.write(json.dumps(rec) + "\n")
                sf.write(
                    json.dumps({"candidate_id": cid, "pair_id": pid, "score": round(rng.random() * 10, 6)})
                    + "\n"
                )
    ext = root / "llava_med_instruct_ext.json"
    with ext.open("w") as f:
        f.write("[")
        for i in range(external):
            rec = {"id": f"ext{i}", "image": f"ext/{i}.jpg", "conversations": _conv(rng)}
            f.write(("," if i else "") + json.dumps(rec))
        f.write("]")
    return ext


BASELINE = """
import json, resource, sys, time
t = time.perf_counter(); n = 0
with open(sys.argv[1]) as f:
    for line in f:
        json.loads(line); n += 1
ext = json.load(open(sys.argv[2]))  # what curate.mix did before: the whole external list in memory
n += len(ext)
print(json.dumps({"records": n, "wall_s": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

CURATE = """
import json, resource, sys, time
from vital.curate import run
from vital.params import CurateParams
from vital.paths import Paths
t = time.perf_counter()
m = run(CurateParams(keep=[10, 40, 80, 90], policy="all", mix={"mix210k": ["top90", sys.argv[2]]}), Paths(sys.argv[1]))
print(json.dumps({"candidates": m["candidates"], "mix210k": m["mixtures"]["mix210k"]["records"],
                  "wall_s": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--figures", type=int, default=37_500)
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--external", type=int, default=75_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/vital-bench-curate"))
    args = ap.parse_args()
    root = args.dir / f"{args.figures}x{args.candidates}+{args.external}"
    ext = root / "llava_med_instruct_ext.json"
    if not ext.exists():
        build(root, args.figures, args.candidates, args.external)
    base = child(BASELINE, str(root / "artifacts" / "candidates.jsonl"), str(ext))
    cur = child(CURATE, str(root), str(ext))
    size = sum(p.stat().st_size for p in (root / "artifacts" / "curated").glob("*.json"))
    print(
        json.dumps(
            {
                "candidates_mb": round((root / "artifacts" / "candidates.jsonl").stat().st_size / 2**20, 1),
                "external_mb": round(ext.stat().st_size / 2**20, 1),
                "curated_written_mb": round(size / 2**20, 1),
                "baseline_json": {k: round(v, 1) if isinstance(v, float) else v for k, v in base.items()},
                "curate": {k: round(v, 1) if isinstance(v, float) else v for k, v in cur.items()},
                "ratio_wall": round(cur["wall_s"] / base["wall_s"], 2),
                "ratio_rss": round(cur["peak_rss_mb"] / base["peak_rss_mb"], 2),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
