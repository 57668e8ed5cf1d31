"""Cost of one selector sweep point against one embed pass, and embed throughput against bare forward.

    python bench/selector.py [--root .] [--weight 400]

(Not bench/select.py: a script named select.py shadows the stdlib `select` module.)

Runs, in one process on the same inputs: the embed stage (forced), the select stage once, and the
backbone's bare forward over the very batches the embed stage fed it (decoded and tokenized beforehand).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vital import embed, selector
from vital.foundation import load_clip
from vital.params import load_params
from vital.paths import Paths


def bare_forward(ep, paths: Paths) -> dict[str, float]:
    ref = embed.backbone_ref(ep, paths)
    model, preprocess, tokenizer = load_clip(ref[0], ref[1], device=ep.device)
    inputs = embed.read_inputs(paths.candidates, paths.sample)
    ids = list(inputs.figures)
    ds = embed.FigureImages(ids, [inputs.figures[p].image for p in ids], paths.corpus, preprocess)
    batches = list(embed.iter_figure_batches(embed.image_batches(ds, ep.batch_size, ep.num_workers)))
    texts = [embed.candidate_text(inputs.figures[c.pair_id], c, ep.text_order) for c in inputs.candidates]
    tokens = [tokenizer(texts[i : i + ep.batch_size]) for i in range(0, len(texts), ep.batch_size)]
    with torch.no_grad():
        t0 = time.perf_counter()
        for b in batches:
            model.encode_image(b.to(ep.device))
        img_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for t in tokens:
            model.encode_text(t.to(ep.device))
        txt_s = time.perf_counter() - t0
    return {"images": sum(len(b) for b in batches), "image_s": img_s, "texts": len(texts), "text_s": txt_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", default=".")
    ap.add_argument("--weight", type=float, default=None, help="human_weight of the sweep point")
    args = ap.parse_args()
    root = Path(args.root)
    params = load_params(root / "params.yaml")
    paths = Paths(root)
    sp = (
        params.selector
        if args.weight is None
        else params.selector.model_copy(update={"human_weight": args.weight})
    )
    sp = sp.model_copy(update={"compare_weights": []})  # one sweep point = one head

    t0 = time.perf_counter()
    em = embed.run(params.embed, paths, force=True)
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    selector.run(sp, paths)
    select_s = time.perf_counter() - t0
    bare = bare_forward(params.embed, paths)

    out = {
        "embed_pass_s": round(embed_s, 2),
        "sweep_point_s": round(select_s, 2),
        "sweep_point_over_embed": round(select_s / embed_s, 4),
        "embed_images_per_s": round(em["figures"] / em["image_seconds"], 1),
        "bare_images_per_s": round(bare["images"] / bare["image_s"], 1),
        "embed_texts_per_s": round(em["candidates"] / em["text_seconds"], 1),
        "bare_texts_per_s": round(bare["texts"] / bare["text_s"], 1),
        "torch_threads": torch.get_num_threads(),
    }
    out["image_efficiency"] = round(out["embed_images_per_s"] / out["bare_images_per_s"], 3)
    out["text_efficiency"] = round(out["embed_texts_per_s"] / out["bare_texts_per_s"], 3)
    print(json.dumps(out, indent=2))
    print(f"one sweep point costs {out['sweep_point_over_embed']:.3f} x one embed pass")


if __name__ == "__main__":
    main()
