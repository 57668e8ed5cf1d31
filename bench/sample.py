"""Sampling at scale: the sample stage over a synthetic PMC-15M-style Parquet index.

    python bench/sample.py [--rows 2000000] [--per-domain 12000] [--dir /tmp/vital-bench-sample]

Builds (once, reused when present) a Parquet index of ``--rows`` figure records (``pair_id``, ``pmid``,
``fig_label``, ``fig_caption``, ``image``, ``domain``; 1% of rows repeat an earlier pair_id, as real
indexes do), then, each in a fresh process so peak RSS is its own:

- baseline: the same file read with plain pyarrow (record batches -> Python dicts, nothing else);
- sample: ``vital.sample.run`` drawing ``--per-domain`` figures per domain (5 domains: 60K by default)
  with ``corpus.format: pmc_index`` and ``check_images: false`` (no images exist).

Prints one JSON object: wall time and peak RSS of both, their ratios, and a linear extrapolation to 15M
rows (time grows with rows; memory by the 8-byte key per row plus, with repeated pair_ids, the second
pass, which holds no more than the first).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _child import child  # bench/_child.py (bench/ is sys.path[0] when run as a script)

DOMAINS = ("chest_xray", "ct_scan", "mri", "histology", "gross")
WORDS = [
    "axial",
    "coronal",
    "lesion",
    "mass",
    "nodule",
    "effusion",
    "contrast",
    "enhanced",
    "tumour",
    "cells",
    "stain",
    "margin",
    "left",
    "right",
]


def build_index(path: Path, rows: int, chunk: int = 200_000) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    writer = None
    tmp = path.with_suffix(".tmp")
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        idx = np.arange(start, start + n)
        # 1% of rows repeat an earlier pair_id
        src = np.where(rng.random(n) < 0.01, rng.integers(0, max(start, 1), n), idx)
        words = rng.integers(0, len(WORDS), (n, 20))
        captions = [
            " ".join(WORDS[w] for w in row) + f" (figure {i})." for i, row in zip(idx, words, strict=True)
        ]
        table = pa.table(
            {
                "pair_id": [f"PMC{s}_F1" for s in src],
                "pmid": [str(30_000_000 + s) for s in src],
                "fig_label": ["Figure 1"] * n,
                "fig_caption": captions,
                "image": [f"figures/PMC{s}_F1.jpg" for s in src],
                "domain": [DOMAINS[d] if d < 5 else "other" for d in rng.integers(0, 6, n)],
            }
        )
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table, row_group_size=50_000)
    writer.close()
    tmp.rename(path)


BASELINE = """
import json, resource, sys, time
import pyarrow.dataset as ds
t = time.perf_counter(); n = 0
for batch in ds.dataset(sys.argv[1], format="parquet").to_batches(batch_size=8192):
    for rec in batch.to_pylist():
        n += 1
print(json.dumps({"rows": n, "wall_s": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

SAMPLE = """
import json, resource, sys, time
from pathlib import Path
from vital.params import SampleParams
from vital.sample import run
cfg = SampleParams.model_validate({"per_domain": int(sys.argv[2]), "corpus": {
    "format": "pmc_index", "path": sys.argv[1], "check_images": False}})
t = time.perf_counter()
out = Path(sys.argv[3])
r = run(Path(sys.argv[1]), out / "sample.jsonl", out / "sample.json", cfg)
print(json.dumps({"rows": r["read"], "sampled": r["sampled"], "skipped": r["dropped_by_reason"],
                  "wall_s": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--per-domain", type=int, default=12_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/vital-bench-sample"))
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    index = args.dir / f"index-{args.rows}.parquet"
    t = time.perf_counter()
    if not index.exists():
        build_index(index, args.rows)
    built_s = time.perf_counter() - t
    base = child(BASELINE, str(index))
    samp = child(SAMPLE, str(index), str(args.per_domain), str(args.dir))
    scale = 15_000_000 / args.rows
    print(
        json.dumps(
            {
                "rows": args.rows,
                "index_mb": round(index.stat().st_size / 2**20, 1),
                "build_s": round(built_s, 1),
                "baseline_pyarrow": {k: round(v, 1) if isinstance(v, float) else v for k, v in base.items()},
                "sample": {k: round(v, 1) if isinstance(v, float) else v for k, v in samp.items()},
                "ratio_wall": round(samp["wall_s"] / base["wall_s"], 2),
                "ratio_rss": round(samp["peak_rss_mb"] / base["peak_rss_mb"], 2),
                "extrapolated_15m": {
                    "wall_min": round(samp["wall_s"] * scale / 60, 1),
                    "peak_rss_mb": round(samp["peak_rss_mb"] + 8 * (15_000_000 - args.rows) / 2**20, 0),
                },
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
