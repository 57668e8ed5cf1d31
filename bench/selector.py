"""Cost of one selector sweep point against one embed pass, and embed throughput against bare forward.

    python bench/selector.py [--root .] [--weight 400]

(Not bench/select.py: a script named select.py shadows the stdlib `select` module.)

Runs, in one process on the same inputs: the embed stage (forced), the select stage once, and the
backbone's bare forward over the very image batches and text sequences the embed stage encodes (decoded
and tokenized beforehand). It works in a scratch copy whose inputs link to the project's, so it never
overwrites pipeline outputs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from vital import embed, selector
from vital.embed.images import FigureImages, image_batches, iter_figure_batches
from vital.embed.inputs import read_inputs
from vital.embed.stage import backbone_ref
from vital.embed.text import candidate_text, context_text, round_texts
from vital.foundation import load_clip
from vital.params import load_params
from vital.paths import Paths


def embedded_texts(ep, inputs) -> list[str]:
    """Every text sequence the embed stage encodes, in its order (rounds, captions, mirrored rounds)."""
    if ep.text_mode == "joint":
        return [candidate_text(inputs.figures[c.pair_id], c, ep.text_order) for c in inputs.candidates]
    rounds = [t for c in inputs.candidates for t in round_texts(c)]
    texts = rounds + [context_text(f) for f in inputs.figures.values()]
    if ep.side_features:
        from vital.mirror import mirror_text

        texts += [mirror_text(t) for t in rounds]
    return texts


def bare_forward(ep, paths: Paths) -> dict[str, float]:
    """The backbone alone over the same image batches and text sequences, decoded/tokenized beforehand."""
    ref = backbone_ref(ep, paths)
    model, preprocess, tokenizer = load_clip(ref[0], ref[1], device=ep.device)
    inputs = read_inputs(paths.candidates, paths.sample)
    ids = list(inputs.figures)
    ds = FigureImages(ids, [inputs.figures[p].image for p in ids], paths.corpus, preprocess)
    batches = list(iter_figure_batches(image_batches(ds, ep.batch_size, ep.num_workers)))
    texts = embedded_texts(ep, inputs)
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


def scratch_root(root: Path) -> Path:
    """A temporary project whose inputs link to ``root``'s: the bench never overwrites pipeline outputs."""
    tmp = Path(tempfile.mkdtemp(prefix="vital-bench-"))
    src, dst = Paths(root), Paths(tmp)
    for a, b in [(src.data, dst.data), (src.foundation, dst.foundation)]:
        b.parent.mkdir(parents=True, exist_ok=True)
        b.symlink_to(a.resolve(), target_is_directory=True)
    dst.artifacts.mkdir(parents=True, exist_ok=True)
    for name in ("candidates", "sample", "pairs", "judgments", "labels"):
        getattr(dst, name).symlink_to(getattr(src, name).resolve())
    return tmp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", default=".")
    ap.add_argument("--weight", type=float, default=None, help="human_weight of the sweep point")
    args = ap.parse_args()
    root = Path(args.root)
    params = load_params(root / "params.yaml")
    scratch = scratch_root(root)
    paths = Paths(scratch)
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
    shutil.rmtree(scratch)

    out = {
        "embed_pass_s": round(embed_s, 2),
        "sweep_point_s": round(select_s, 2),
        "sweep_point_over_embed": round(select_s / embed_s, 4),
        "embed_images_per_s": round(em["figures"] / em["image_seconds"], 1),
        "bare_images_per_s": round(bare["images"] / bare["image_s"], 1),
        "embed_texts_per_s": round(bare["texts"] / em["text_seconds"], 1),
        "bare_texts_per_s": round(bare["texts"] / bare["text_s"], 1),
        "torch_threads": torch.get_num_threads(),
    }
    out["image_efficiency"] = round(out["embed_images_per_s"] / out["bare_images_per_s"], 3)
    out["text_efficiency"] = round(out["embed_texts_per_s"] / out["bare_texts_per_s"], 3)
    print(json.dumps(out, indent=2))
    print(f"one sweep point costs {out['sweep_point_over_embed']:.3f} x one embed pass")


if __name__ == "__main__":
    main()
