"""Embed: features keyed by candidate id, image once per figure, skip when unchanged, bad input counted."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_foundation import make_corpus, tiny_params

from vital.embed import run
from vital.embed.store import load_embeddings
from vital.embed.text import candidate_text
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
    assert m["dropped_by_reason"] == {
        "figure_image_unreadable": 3,
        "figure_not_in_sample": 1,
        "unreadable_image": 1,
    }
    unreadable = [e for e in m["dropped_examples"] if e["reason"] == "unreadable_image"]
    assert unreadable[0]["where"] == figs[1]["pair_id"]
    assert m["candidates"] == 15


def test_invalid_lines_are_counted_with_file_and_line(tmp_path: Path):
    paths = world(tmp_path)
    n_sample = len(paths.sample.read_text().splitlines())
    n_cands = len(paths.candidates.read_text().splitlines())
    with paths.sample.open("a") as f:
        f.write(json.dumps({"pair_id": "nofig"}) + "\n")
    with paths.candidates.open("a") as f:
        f.write(json.dumps({"id": "fig0000#9"}) + "\n")
    m = run(EmbedParams(), paths)
    assert m["dropped_by_reason"] == {"bad_line": 2}
    assert [e["where"] for e in m["dropped_examples"]] == [
        f"{paths.sample}:{n_sample + 1}",
        f"{paths.candidates}:{n_cands + 1}",
    ]
    assert m["candidates"] == 18


def _candidate(*turns: str) -> Candidate:
    """Candidate F#0 whose conversation alternates human and gpt turns."""
    conv = [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)]
    return Candidate.model_validate(
        {"id": "F#0", "pair_id": "F", "image": "a.png", "domain": "ct_scan", "conversations": conv}
    )


def test_text_is_paper_order_or_qa_first():
    fig = FigureRecord(
        pair_id="F", pmid="1", fig_caption="CT of the chest.", in_text_mention=["As in Fig 1."], image="a.png"
    )
    cand = _candidate("<image>\nSide?", "Left.")
    assert candidate_text(fig, cand) == "CT of the chest. As in Fig 1. Question: Side? Answer: Left."
    assert (
        candidate_text(fig, cand, "qa_first") == "Question: Side? Answer: Left. CT of the chest. As in Fig 1."
    )


def test_no_usable_candidates(tmp_path: Path):
    paths = world(tmp_path)
    write_jsonl(paths.candidates, [])
    with pytest.raises(RecordError, match="no usable candidate"):
        run(EmbedParams(), paths)


def test_rounds_mode_pools_rounds_and_keeps_context(tmp_path: Path):
    paths = world(tmp_path)
    m = run(EmbedParams(batch_size=4, text_mode="rounds"), paths)
    emb = load_embeddings(paths.embeddings)
    assert m["text_mode"] == "rounds" and emb.text_max is not None and emb.context is not None
    assert emb.text_max.shape == emb.text.shape == emb.context.shape == (18, 16)
    assert emb.round_sim.shape == (18, 4) and np.all(np.abs(emb.round_sim) <= 1 + 1e-5)
    # one round per candidate: mean == max == the normalised round feature
    assert np.allclose(emb.text, emb.text_max, atol=1e-6)
    assert np.allclose(np.linalg.norm(emb.text, axis=1), 1.0, atol=1e-5)
    # the caption embedding is the figure's, shared by its candidates
    assert np.array_equal(emb.context[0], emb.context[2]) and not np.array_equal(
        emb.context[0], emb.context[3]
    )
    # joint mode stores neither, and switching mode is a different fingerprint (recomputed, not skipped)
    assert run(EmbedParams(text_mode="joint"), paths)["skipped"] is False
    joint = load_embeddings(paths.embeddings)
    assert joint.text_max is None and joint.context is None


def test_pool_rounds_mean_and_max():
    from vital.embed.rounds import pool_rounds

    feats = np.array([[3.0, 0.0], [0.0, 2.0], [1.0, 0.0]], dtype=np.float32)
    mean, mx = pool_rounds(feats, np.array([0, 0, 1]), 2)
    assert np.allclose(mean, [[0.5, 0.5], [1.0, 0.0]]) and np.allclose(mx, [[1.0, 1.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match="no round"):
        pool_rounds(feats, np.array([0, 0, 0]), 2)


def test_round_texts_one_per_round():
    from vital.embed.text import round_texts

    cand = _candidate("<image>\nSide?", "Left.", "How many?", "Two.")
    assert round_texts(cand) == ["Question: Side? Answer: Left.", "Question: How many? Answer: Two."]


def test_stated_side_reads_one_side_only():
    from vital.embed.probe import stated_side

    assert stated_side("Lesion in the LEFT lobe.") == 1.0
    assert stated_side("right upper zone") == 0.0
    assert stated_side("left and right lungs") is None
    assert stated_side("no side here") is None


def test_text_side_is_zero_without_side_words_and_signed_otherwise():
    from vital.embed.rounds import text_side

    feats = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], dtype=np.float32)
    mirrored = np.array([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5]], dtype=np.float32)  # round 1 named a side
    out = text_side(feats, mirrored, np.array([0, 0, 1]), 2)
    np.testing.assert_allclose(out[1], 0.0)
    np.testing.assert_allclose(out[0], [-0.5, 0.5])


def test_side_scores_are_crossfitted_and_learn_the_direction():
    from vital.embed.probe import side_scores

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    truth = (x[:, 0] > 0).astype(float)
    labels = [float(t) if i < 150 else None for i, t in enumerate(truth)]  # the last 50 state no side
    scores, info = side_scores(x, labels)
    assert scores.shape == (200, 1) and np.all(np.abs(scores) <= 1)
    assert info["side_probe_captions"] == 150 and info["side_probe_crossfit_accuracy"] > 0.85
    assert ((scores[150:, 0] > 0) == (truth[150:] > 0.5)).mean() > 0.85


def test_side_scores_skip_when_too_few_captions_state_a_side():
    from vital.embed.probe import side_scores

    scores, info = side_scores(np.ones((5, 3), dtype=np.float32), [1.0, None, None, None, 0.0])
    assert np.all(scores == 0) and "skipped" in info["side_probe"]


def test_patch_side_flips_sign_with_the_mirrored_image():
    from vital.embed.images import patch_side
    from vital.foundation.clip import build_tiny_clip
    from vital.params import FoundationParams

    model, _, _ = build_tiny_clip(FoundationParams(width=32, layers=1, embed_dim=16))
    model.eval()
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = patch_side(model, img), patch_side(model, img.flip(-1))
    assert a.shape == (2, 32)
    assert not torch.allclose(a, torch.zeros_like(a))
    assert not torch.allclose(a, b)  # the feature depends on which side is which


def test_rerun_writes_byte_identical_output(tmp_path: Path):
    """Same inputs, same output bytes: DVC must not see a changed output (and rerun select) because of timings."""
    paths = world(tmp_path)
    run(EmbedParams(), paths)
    first = {f.name: f.read_bytes() for f in paths.embeddings.iterdir()}
    time.sleep(2.1)  # zip timestamps have a 2 s resolution: a stamped archive would now differ
    m = run(EmbedParams(), paths, force=True)
    assert m["skipped"] is False and "image_seconds" in m
    assert {f.name: f.read_bytes() for f in paths.embeddings.iterdir()} == first
