"""Embed: features keyed by candidate id, image once per figure, skip when unchanged, bad input counted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_foundation import make_corpus, tiny_params

from vital.embed import candidate_text, load_embeddings, run
from vital.foundation import build_tiny_clip, save_clip, tiny_clip_config
from vital.io import RecordError, write_jsonl
from vital.params import EmbedParams
from vital.paths import Paths
from vital.schema import Candidate, FigureRecord

torch.set_num_threads(1)


def world(root: Path, figures: int = 6, k: int = 3) -> Paths:
    paths = Paths(root)
    figs = make_corpus(root, figures)
    fp = tiny_params()
    model, _, _ = build_tiny_clip(fp)
    save_clip(model, tiny_clip_config(fp), paths.foundation / "clip")
    write_jsonl(paths.sample, figs)
    cands = []
    for f in figs:
        for c in range(k):
            conv = [
                {"from": "human", "value": "<image>\nWhich side?"},
                {"from": "gpt", "value": ["left", "right", "unsure"][c]},
            ]
            cands.append(
                {
                    "id": f"{f['pair_id']}#{c}",
                    "pair_id": f["pair_id"],
                    "image": f["image"],
                    "domain": "ct_scan",
                    "conversations": conv,
                }
            )
    write_jsonl(paths.candidates, cands)
    return paths


def test_features_keyed_by_candidate(tmp_path: Path):
    paths = world(tmp_path)
    m = run(EmbedParams(batch_size=4), paths)
    emb = load_embeddings(paths.embeddings)
    assert m["candidates"] == 18 and m["figures"] == 6 and m["skipped"] is False
    assert emb.candidate_ids[0] == "fig0000#0" and emb.image.shape == (18, 16) and emb.text.shape == (18, 16)
    # candidates of one figure share the image row, differ in text
    assert np.array_equal(emb.image[0], emb.image[2]) and not np.array_equal(emb.image[0], emb.image[3])
    assert not np.allclose(emb.text[0], emb.text[1])
    # unchanged inputs: skipped; changed candidates: recomputed
    assert run(EmbedParams(batch_size=8), paths)["skipped"] is True
    lines = paths.candidates.read_text().splitlines()
    paths.candidates.write_text("\n".join(lines[:-3]) + "\n")
    assert run(EmbedParams(), paths)["candidates"] == 15


def test_bad_records_are_counted(tmp_path: Path):
    paths = world(tmp_path)
    figs = [json.loads(x) for x in paths.sample.read_text().splitlines()]
    (tmp_path / "data/corpus" / figs[1]["image"]).write_bytes(b"corrupt")
    with paths.candidates.open("a") as f:
        f.write(
            json.dumps(
                {"id": "ghost#0", "pair_id": "ghost", "image": "x.png", "domain": "mri", "conversations": []}
            )
            + "\n"
        )
    m = run(EmbedParams(), paths)
    assert m["dropped"] == {"unknown_figure": 1, "unreadable_image": 1, "figure_image_unreadable": 3}
    assert figs[1]["pair_id"] in m["dropped_examples"]["unreadable_image"][0]
    assert m["candidates"] == 15


def test_text_is_paper_order_or_qa_first():
    fig = FigureRecord(
        pair_id="F", pmid="1", fig_caption="CT of the chest.", in_text_mention=["As in Fig 1."], image="a.png"
    )
    cand = Candidate.model_validate(
        {
            "id": "F#0",
            "pair_id": "F",
            "image": "a.png",
            "domain": "ct_scan",
            "conversations": [
                {"from": "human", "value": "<image>\nSide?"},
                {"from": "gpt", "value": "Left."},
            ],
        }
    )
    assert candidate_text(fig, cand) == "CT of the chest. As in Fig 1. Question: Side? Answer: Left."
    assert (
        candidate_text(fig, cand, "qa_first") == "Question: Side? Answer: Left. CT of the chest. As in Fig 1."
    )


def test_no_usable_candidates(tmp_path: Path):
    paths = world(tmp_path)
    write_jsonl(paths.candidates, [])
    with pytest.raises(RecordError, match="no usable candidates"):
        run(EmbedParams(), paths)
