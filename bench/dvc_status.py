"""`dvc add` and `dvc status` on N loose small images against the same images in tar shards, one run.

    python bench/dvc_status.py [--n 100000] [--shard-size 2000] [--keep DIR]

Builds two real DVC repos (git + dvc init) in a temp dir: one tracks ``data/images/`` (N loose PNGs), the
other ``data/shards/`` (the same PNG bytes in ceil(N / shard-size) tars written by vital.shards). Times
``dvc add`` and then ``dvc status`` three times (the first after add; DVC's state DB has the mtimes by
then, so all three are what a user sees on every status), and prints one JSON object with the ratio.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from PIL import Image

from vital.shards import ShardWriter


def tiny_png(i: int) -> bytes:
    """8x8 PNG, distinct per i (so DVC hashes N different files)."""
    im = Image.new("RGB", (8, 8), (i & 255, (i >> 8) & 255, (i >> 16) & 255))
    im.putpixel((i % 8, (i // 8) % 8), (255 - (i & 255), 0, 0))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def sh(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{r.stdout}\n{r.stderr}")
    return dt


def repo(root: Path) -> Path:
    root.mkdir(parents=True)
    sh(["git", "init", "-q"], root)
    sh(["git", "config", "user.email", "bench@example.invalid"], root)
    sh(["git", "config", "user.name", "bench"], root)
    sh(["dvc", "init", "-q"], root)
    sh(["dvc", "config", "core.autostage", "false"], root)
    return root


def measure(root: Path, target: str, repeats: int) -> dict:
    add = sh(["dvc", "add", "-q", target], root)
    status = [sh(["dvc", "status", "-q"], root) for _ in range(repeats)]
    return {"dvc_add_s": round(add, 2), "dvc_status_s": [round(s, 2) for s in status]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="images (default 100000)")
    ap.add_argument("--shard-size", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", default=None, help="work here and keep it (default: a temp dir, removed)")
    a = ap.parse_args()
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="vital-dvc-bench-"))
    try:
        loose = repo(work / "loose")
        shards = repo(work / "shards")
        t0 = time.perf_counter()
        img_dir = loose / "data" / "images"
        img_dir.mkdir(parents=True)
        writer = None
        for i in range(a.n):
            data = tiny_png(i)
            sub = img_dir / f"{i // 1000:04d}"  # 1000 per folder, as a real corpus would be split
            if i % 1000 == 0:
                sub.mkdir()
            (sub / f"{i:07d}.png").write_bytes(data)
            if i % a.shard_size == 0:
                if writer is not None:
                    writer.commit()
                writer = ShardWriter(shards / "data" / "shards" / f"shard-{i // a.shard_size:05d}.tar")
            writer.add(f"{i:07d}", "png", data, {"pair_id": str(i)})
        writer.commit()
        gen_s = time.perf_counter() - t0
        loose_bytes = sum(p.stat().st_size for p in img_dir.rglob("*.png"))
        res_loose = measure(loose, "data/images", a.repeats)
        res_shards = measure(shards, "data/shards", a.repeats)
        med_l, med_s = (
            statistics.median(res_loose["dvc_status_s"]),
            statistics.median(res_shards["dvc_status_s"]),
        )
        out = {
            "n_images": a.n,
            "image_bytes": loose_bytes,
            "shard_size": a.shard_size,
            "n_shards": len(list((shards / "data" / "shards").glob("*.tar"))),
            "generate_s": round(gen_s, 1),
            "loose": res_loose,
            "shards": res_shards,
            "status_ratio_loose_over_shards": round(med_l / med_s, 1),
            "add_ratio_loose_over_shards": round(res_loose["dvc_add_s"] / res_shards["dvc_add_s"], 1),
            "cpus": os.cpu_count(),
        }
        print(json.dumps(out, indent=2))
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
