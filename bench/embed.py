"""Image embedding throughput at BiomedCLIP's width: the embed stage's image path against a bare forward.

    python bench/embed.py --n 64 --device cpu                        # smoke run (any machine)
    python bench/embed.py --n 20000 --device cuda --precision bf16 --num-workers 8 --source shards
    accelerate launch --multi_gpu --num_processes 8 bench/embed.py --n 200000 --device cuda ...

The model is open_clip's ``ViT-B-16`` with random weights: the same vision tower as BiomedCLIP
(ViT-B/16 at 224 px; its PubMedBERT text tower needs the Hub, and weights do not change the speed).
In one run it times

- ``stage``: ``vital.embed.encode_images_ranked`` over ``FigureImages`` (JPEG decode from loose files
  or from tar shards through ``vital.shards.open_image``, preprocess, DataLoader, forward, gather), and
- ``bare``: the forward alone on one preprocessed batch already on the device, repeated,

and prints images/s of both and their ratio (how much of the forward's speed the input path keeps).
Under ``accelerate launch`` each rank encodes its share and the stage figure is for the whole job.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vital.embed.images import FigureImages
from vital.embed.ranks import encode_images_ranked, join_ranks
from vital.params import EmbedParams
from vital.shards import ShardWriter


def make_images(root: Path, n: int, side: int, source: str) -> list[str]:
    """n JPEGs (figure-like: smooth background + noise), loose or in shards of 1000; returns refs."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (side // 8, side // 8, 3), dtype=np.uint8)
    refs, writer = [], None
    for i in range(n):
        arr = np.asarray(Image.fromarray(np.roll(base, i, axis=1)).resize((side, side)))
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=90)
        data = buf.getvalue()
        if source == "loose":
            (root / f"{i:07d}.jpg").write_bytes(data)
            refs.append(f"{i:07d}.jpg")
        else:
            if i % 1000 == 0:
                if writer is not None:
                    writer.commit()
                writer = ShardWriter(root / f"shard-{i // 1000:05d}.tar")
            writer.add(f"{i:07d}", "jpg", data, {"pair_id": str(i)})
            refs.append(f"shard-{i // 1000:05d}.tar#{i:07d}.jpg")
    if writer is not None:
        writer.commit()
    return refs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    ap.add_argument("--image-side", type=int, default=512, help="side of the source JPEGs (default 512)")
    ap.add_argument("--source", choices=["loose", "shards"], default="shards")
    ap.add_argument("--model", default="ViT-B-16")
    a = ap.parse_args()

    import open_clip

    ranks = join_ranks(a.device)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(a.model, pretrained=None)
    model = model.to(ranks.device).eval()
    cast = (
        torch.autocast(
            device_type=ranks.device.split(":")[0],
            dtype=getattr(torch, {"fp16": "float16", "bf16": "bfloat16"}[a.precision]),
        )
        if a.precision != "fp32"
        else contextlib.nullcontext()
    )

    def sync() -> None:
        if ranks.device.startswith("cuda"):
            torch.cuda.synchronize()

    work = Path(tempfile.mkdtemp(prefix=f"vital-embed-bench-{ranks.rank}-"))
    try:
        t0 = time.perf_counter()
        refs = make_images(work, a.n, a.image_side, a.source)
        gen_s = time.perf_counter() - t0
        ds = FigureImages([str(i) for i in range(a.n)], refs, work, preprocess)
        ep = EmbedParams(batch_size=a.batch_size, num_workers=a.num_workers, device=a.device)
        with torch.no_grad(), cast:  # warm-up (kernels, allocator) outside the timings
            model.encode_image(
                torch.stack([ds[i][1] for i in range(min(a.batch_size, a.n))]).to(ranks.device)
            )
        sync()
        t0 = time.perf_counter()
        with cast:
            feats, failed, _ = encode_images_ranked(model, ds, ep, a.n, False, ranks)
        sync()
        stage_s = time.perf_counter() - t0
        assert not failed and not np.isnan(feats).any(), failed
        batch = torch.stack([ds[i][1] for i in range(min(a.batch_size, a.n))]).to(ranks.device)
        reps = max(1, -(-a.n // (len(batch) * ranks.world)))
        sync()
        t0 = time.perf_counter()
        with torch.no_grad(), cast:
            for _ in range(reps):
                model.encode_image(batch)
        sync()
        bare_s = time.perf_counter() - t0
        if ranks.main:
            stage_ips = a.n / stage_s
            bare_ips = reps * len(batch) * ranks.world / bare_s
            print(
                json.dumps(
                    {
                        "model": a.model,
                        "weights": "random",
                        "device": ranks.device,
                        "processes": ranks.world,
                        "precision": a.precision,
                        "source": a.source,
                        "n": a.n,
                        "batch_size": a.batch_size,
                        "num_workers": a.num_workers,
                        "image_side": a.image_side,
                        "torch_threads": torch.get_num_threads(),
                        "generate_s": round(gen_s, 1),
                        "stage_images_per_s": round(stage_ips, 1),
                        "bare_forward_images_per_s": round(bare_ips, 1),
                        "stage_over_bare": round(stage_ips / bare_ips, 3),
                    },
                    indent=2,
                )
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
