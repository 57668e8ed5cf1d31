"""Curate: top-k% by score, same-size random baselines, provenance, mixtures, per-domain counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vital.curate import run, top_share
from vital.io import RecordError, write_jsonl
from vital.params import CurateParams
from vital.paths import Paths


def make(root: Path, figures: int = 20, k: int = 3) -> Paths:
    paths = Paths(root)
    cands, scores = [], []
    for f in range(figures):
        dom = ["ct_scan", "mri"][f % 2]
        for c in range(k):
            cid = f"F{f:02d}#{c}"
            conv = [
                {"from": "human", "value": "<image>\nWhat is shown?"},
                {"from": "gpt", "value": f"answer {cid}"},
            ]
            cands.append(
                {
                    "id": cid,
                    "pair_id": f"F{f:02d}",
                    "image": f"images/{dom}/F{f}.png",
                    "domain": dom,
                    "conversations": conv,
                    "generator": {"model": "template-v1"},
                }
            )
            if cid != "F19#2":  # one unscored candidate
                scores.append({"candidate_id": cid, "pair_id": f"F{f:02d}", "score": f + c / 10})
    write_jsonl(paths.candidates, cands)
    write_jsonl(paths.scores, scores)
    return paths


def load(paths: Paths, name: str) -> list[dict]:
    return json.loads((paths.curated / f"{name}.json").read_text())


def test_best_per_figure_top_and_random(tmp_path: Path):
    paths = make(tmp_path)
    m = run(CurateParams(keep=[10, 50]), paths)
    top10, top50, rnd50 = load(paths, "top10"), load(paths, "top50"), load(paths, "random50")
    assert m["pool"] == 20 and m["dropped_by_reason"] == {"unscored_candidate": 1}
    assert [r["id"] for r in top10] == ["F19#1", "F18#2"]  # F19#2 has no score
    assert len(top50) == len(rnd50) == 10
    assert len({r["provenance"]["pair_id"] for r in top50}) == 10  # one per figure
    r = top10[0]
    assert r["conversations"][0]["from"] == "human" and "<image>" in r["conversations"][0]["value"]
    assert r["provenance"] == {"pair_id": "F19", "candidate": "F19#1", "generator": {"model": "template-v1"}}
    assert m["subsets"]["top50"]["mean_score"] > m["subsets"]["random50"]["mean_score"]
    assert sum(m["subsets"]["top50"]["by_domain"].values()) == 10
    run(CurateParams(keep=[10, 50]), paths)
    assert load(paths, "random50") == rnd50  # seeded


def test_all_policy_and_mixture(tmp_path: Path):
    paths = make(tmp_path)
    ext = tmp_path / "llava_med_10k.json"
    ext.write_text(
        json.dumps(
            [
                {
                    "id": "ext1",
                    "image": "a.jpg",
                    "domain": {"chest_xray": True},
                    "conversations": [
                        {"from": "human", "value": "<image>\nQ"},
                        {"from": "gpt", "value": "A"},
                    ],
                },
                {"id": "ext2", "image": "b.jpg", "conversations": "broken"},
            ]
        )
    )
    m = run(CurateParams(keep=[40], policy="all", mix={"mix": ["top40", str(ext)]}), paths)
    assert m["pool"] == 59 and m["subsets"]["top40"]["records"] == 24
    mix = load(paths, "mix")
    assert len(mix) == 25 and mix[-1]["provenance"] == {"source": str(ext)}
    assert m["mixtures"]["mix"]["by_domain"]["chest_xray"] == 1
    assert m["dropped_by_reason"]["invalid_external_record"] == 1


def test_bad_mix_part(tmp_path: Path):
    paths = make(tmp_path)
    with pytest.raises(RecordError, match="top33"):
        run(CurateParams(keep=[40], mix={"m": ["top33"]}), paths)


def test_random_baseline_ignores_the_selector(tmp_path: Path):
    """A retrained selector must not change the baseline (so DVC keeps the baseline models), and the
    baseline draws from every figure's candidates, not from the selector's best ones."""
    paths = make(tmp_path)
    run(CurateParams(keep=[50]), paths)
    before = (paths.curated / "random50.json").read_bytes()
    reversed_scores = [
        {**r, "score": -r["score"]} for r in map(json.loads, paths.scores.read_text().splitlines())
    ]
    write_jsonl(paths.scores, reversed_scores)
    run(CurateParams(keep=[50]), paths)
    assert (paths.curated / "random50.json").read_bytes() == before
    chosen = {r["id"].split("#")[1] for r in load(paths, "random50")}
    assert len(chosen) > 1  # not always the same candidate slot per figure
    assert all(r["score"] is None for r in load(paths, "random50"))


def test_streamed_output_is_the_json_list_and_external_problems_name_their_line(tmp_path: Path):
    from vital.curate import write_json_list
    from vital.io import write_json

    recs = [{"id": "a", "text": "é ✓", "n": [1, {"x": None}]}, {"id": "b"}]
    write_json_list(tmp_path / "s.json", iter(recs))
    write_json(tmp_path / "w.json", recs, indent=None)
    assert (tmp_path / "s.json").read_bytes() == (tmp_path / "w.json").read_bytes()

    paths = make(tmp_path / "p")
    good = {
        "id": "ext1",
        "image": "a.jpg",
        "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}],
    }
    ext = tmp_path / "llava_med_60k.json"
    ext.write_text(json.dumps([good, {"id": "ext2", "conversations": []}, 5, good], indent=1))
    m = run(CurateParams(keep=[40], policy="all", mix={"mix": ["top40", str(ext)]}), paths)
    assert m["dropped"] == 4 and m["dropped_by_reason"] == {
        "duplicate_id_in_mixture": 1,
        "invalid_external_record": 2,
        "unscored_candidate": 1,
    }
    external = [e["where"] for e in m["dropped_examples"] if e["reason"] == "invalid_external_record"]
    assert [w.split(" ")[-1] for w in external] == ["[1]", "[2]"] and all(
        w.startswith(f"{ext}:") for w in external
    )
    assert m["mixtures"]["mix"]["records"] == 25


def test_every_curated_record_carries_its_article_and_license_counts_match(tmp_path: Path):
    paths = make(tmp_path)
    licenses = ["CC BY", "CC0", "CC BY-NC"]
    sample = [
        {
            **{"pair_id": f"F{f:02d}", "fig_caption": "CT.", "image": f"images/F{f:02d}.png"},
            **{"pmid": str(100 + f), "pmcid": f"PMC{200 + f}", "license": licenses[f % 3]},
        }
        for f in range(19)  # F19 is not in the sample: unknown
    ]
    write_jsonl(paths.sample, sample)
    m = run(CurateParams(keep=[50, 100], mix={"both": ["top50", "random50"]}), paths)
    for name in ("top50", "random50", "top100", "both"):
        recs = load(paths, name)
        for r in recs:
            f = int(r["provenance"]["pair_id"][1:])
            want = (str(100 + f), f"PMC{200 + f}", licenses[f % 3]) if f < 19 else (None, None, "unknown")
            assert (r["pmid"], r["pmcid"], r["license"]) == want
        counts = {}
        for r in recs:
            counts[r["license"]] = counts.get(r["license"], 0) + 1
        section = m["mixtures"][name] if name == "both" else m["subsets"][name]
        assert section["by_license"] == dict(sorted(counts.items())), name
    assert m["subsets"]["top100"]["by_license"]["unknown"] == 1  # F19


def test_all_policy_ranks_every_candidate_globally_as_the_reference_does(tmp_path: Path):
    """BioMed-VITAL's filter.py sorts all rated samples and keeps the top k%: several of one figure may win."""
    paths = make(tmp_path)
    run(CurateParams(keep=[10], policy="all"), paths)
    scores = {r["candidate_id"]: r["score"] for r in map(json.loads, paths.scores.read_text().splitlines())}
    expected = sorted(scores, key=lambda c: (-scores[c], c))[: round(0.1 * len(scores))]
    top = [r["id"] for r in load(paths, "top10")]
    assert top == expected and len({c.split("#")[0] for c in top}) < len(top)


def test_top_share_is_the_rounded_percentage_and_never_empty():
    """curate's top-k% and every bakeoff subset are cut by this one function."""
    ranked = list(range(7))
    assert top_share(ranked, 40) == [0, 1, 2]  # 2.8 rounds to 3
    assert top_share(ranked, 100) == ranked
    assert top_share(ranked, 1) == [0]  # 0.07 would round to none
    assert top_share([], 50) == []
