"""Bakeoff: the method registry matches params, each scorer on a pool with known answers, the truth quality
scorer on known conversations, IFD on a tiny LLaVA, and the stage end to end on a tiny world."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vital import stats
from vital.bakeoff.methods import METHODS, Pool, check_methods
from vital.bakeoff.stage import bootstrap_gain, run, subset_name
from vital.demo.truth_quality import TruthQuality
from vital.drops import Drops
from vital.embed.store import save_embeddings
from vital.io import RecordError, write_jsonl
from vital.params import BakeoffParams, ParamsError, parse_params
from vital.paths import Paths

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


# ------------------------------------------------------------------ registry and params
def test_registry_matches_params_defaults_and_both_profiles():
    assert BakeoffParams().methods == list(METHODS)
    for name in ("params.yaml", "params-paper.yaml"):
        p = parse_params(yaml.safe_load((REPO / name).read_text()), name)
        check_methods(p.bakeoff.methods)  # every listed method is registered
        assert set(p.bakeoff.downstream_methods) <= set(p.bakeoff.methods)
    assert parse_params(yaml.safe_load((REPO / "params-paper.yaml").read_text())).bakeoff.quality == "none"


def test_unknown_method_and_missing_random_are_clear_errors():
    with pytest.raises(ParamsError, match=r"bakeoff.methods: unknown \['lenght'\]"):
        check_methods(["random", "lenght"])
    with pytest.raises(ParamsError, match="must include random"):
        check_methods(["length"])
    with pytest.raises(ParamsError, match="downstream_keep=50 is not one of keep"):
        parse_params({"bakeoff": {"downstream_keep": 50}})


# ------------------------------------------------------------------ a tiny world with known answers
TRUTH = {
    "lesion": True,
    "side": "left",
    "count": 1,
    "size": "small",
    "modality": "ct",
}
GOOD = "This CT image shows a single small lesion in the left half."
BAD = {  # one flaw each
    "wrong_side": "This CT image shows a single small lesion in the right half.",
    "leakage": "As described in the caption, this CT shows a single small lesion on the left.",
    "hedging": "This CT image may show a single small lesion in the left half.",
    "truncated": "This CT image shows a single small lesion in the left",
}


def conv(answer: str, question: str = "What does the image show?") -> list[dict]:
    return [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]


def test_truth_quality_flags_each_flaw_of_known_conversations(tmp_path: Path):
    paths = Paths(tmp_path)
    write_jsonl(paths.truth, [{"pair_id": "F0", **TRUTH}, {"pair_id": "F1", **TRUTH, "lesion": False}])
    q = TruthQuality(paths)
    good = q.flags("F0", conv(GOOD))
    assert good["flawed"] == 0 and good["wrong_finding"] == good["wrong_side"] == 0
    for flaw, text in BAD.items():
        f = q.flags("F0", conv(text))
        assert f["flawed"] == 1 and f[flaw] == 1, (flaw, f)
        assert f["utility"] < good["utility"]
    assert q.flags("F0", conv(BAD["wrong_side"]))["wrong_finding"] == 1
    hallucinated = q.flags("F1", conv(GOOD))  # a lesion where there is none: wrong finding and side
    assert hallucinated["wrong_finding"] == hallucinated["wrong_side"] == 1
    with pytest.raises(RecordError, match="no hidden truth for figure 'F9'"):
        q.flags("F9", conv(GOOD))


def tiny_world(root: Path, figures: int = 40) -> Paths:
    """Four candidates per figure: #0 accurate, #1-#3 flawed. Known answers per method:
    judge and selector rate #0 best; length and CLIP rate #1 (a long, wrong answer) best; scores_by_weight's
    head "0" rates #2 best."""
    paths = Paths(root)
    rng = np.random.default_rng(0)
    cands, judg, scores, by_w, truth = [], [], [], [], []
    long_wrong = BAD["wrong_side"] + " It is rounded and well circumscribed, with a smooth margin around it."
    texts = [GOOD, long_wrong, BAD["hedging"], BAD["truncated"]]
    dim = 8
    img = rng.normal(size=(figures, dim)).astype(np.float32)
    text = rng.normal(size=(figures * 4, dim)).astype(np.float32)
    for f in range(figures):
        pid = f"F{f:02d}"
        truth.append({"pair_id": pid, **TRUTH})
        text[f * 4 + 1] = img[f]  # candidate #1's text feature is its image's: the highest CLIP cosine
        for k, t in enumerate(texts):
            cid = f"{pid}#{k}"
            dom = ["ct_scan", "mri"][f % 2]
            cands.append(
                {
                    "id": cid,
                    "pair_id": pid,
                    "image": f"images/{pid}.png",
                    "domain": dom,
                    "conversations": conv(t),
                }
            )
            judg.append({"candidate_id": cid, "pair_id": pid, "score": 9.0 - k})
            sel = 1.0 - k / 10 + f / 1000
            scores.append({"candidate_id": cid, "pair_id": pid, "score": sel})
            # the selector trained at seeds 0 and 1 rates #0 best, at seed 2 the truncated #3
            by_seed = {"0": sel, "1": sel, "2": sel + 0.5 * (k == 3)}
            by_w.append(
                {
                    "candidate_id": cid,
                    "pair_id": pid,
                    "scores": {"0": float(k == 2), "1": 0.0},
                    "scores_by_seed": by_seed,
                }
            )
    write_jsonl(paths.candidates, cands)
    write_jsonl(paths.judgments, judg)
    write_jsonl(paths.scores, scores)
    write_jsonl(paths.scores_by_weight, by_w)
    write_jsonl(paths.truth, truth)
    save_embeddings(
        paths.embeddings,
        [f"F{f:02d}" for f in range(figures)],
        img,
        [c["id"] for c in cands],
        np.repeat(np.arange(figures), 4),
        text,
        {"backbone": "synthetic"},
    )
    # the upstream stages' evidence, as run_stage writes it: the bake-off reads each method's cost there
    stats.write(paths.root, stats.StageStats("judge", wall_s=3.0, detail={"estimated_cost_usd": 1.25}))
    stats.write(paths.root, stats.StageStats("labels", wall_s=0.5, detail={"labels": 17, "human_pairs": 60}))
    for stage in ("embed", "pairs", "select"):
        stats.write(paths.root, stats.StageStats(stage, wall_s=2.0))
    return paths


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Paths:
    return tiny_world(tmp_path_factory.mktemp("bakeoff"))


def _pool(paths: Paths) -> Pool:
    from vital.artifacts.candidates import read_candidates

    return Pool(paths, BakeoffParams(), read_candidates(paths.candidates, Drops()))


def _best(scores: dict[str, float], pid: str = "F03") -> str:
    return max((c for c in scores if c.startswith(pid + "#")), key=scores.__getitem__)


def test_each_scorer_rates_the_known_best_candidate_first(world: Paths):
    pool = _pool(world)
    expected = {
        "length": "F03#1",
        "clip": "F03#1",
        "judge": "F03#0",
        "selector": "F03#0",
        "selector_w0": "F03#2",
    }
    for name, best in expected.items():
        scores = METHODS[name].scorer(pool, 0)
        assert len(scores) == 160 and _best(scores) == best, name
    r0, r1 = METHODS["random"].scorer(pool, 0), METHODS["random"].scorer(pool, 1)
    assert r0 == METHODS["random"].scorer(pool, 0) and r0 != r1  # seeded


def test_selector_w0_without_that_head_names_the_file_and_line(tmp_path: Path):
    paths = tiny_world(tmp_path, figures=2)
    write_jsonl(paths.scores_by_weight, [{"candidate_id": "F00#0", "scores": {"400": 1.0}}])
    with pytest.raises(RecordError, match=r"scores_by_weight.jsonl:1: bad_line \(no scores\['0'\]"):
        METHODS["selector_w0"].scorer(_pool(paths), 0)


def test_selector_without_seed_scores_asks_for_a_select_rerun(tmp_path: Path):
    paths = tiny_world(tmp_path, figures=2)
    write_jsonl(paths.scores_by_weight, [{"candidate_id": "F00#0", "scores": {"0": 1.0}}])
    with pytest.raises(RecordError, match=r"scores_by_weight.jsonl:1: needs candidate_id and scores_by_seed"):
        METHODS["selector"].seeds_of(_pool(paths))


def test_selector_w0_over_seeds_where_select_trained_it_so(tmp_path: Path):
    paths = tiny_world(tmp_path, figures=2)
    assert METHODS["selector_w0"].seeds_of(_pool(paths)) == [None]  # one head: scores["0"]
    rows = [json.loads(x) for x in paths.scores_by_weight.read_text().splitlines()]
    write_jsonl(paths.scores_by_weight, [{**r, "weight0_by_seed": {"0": 1.0, "4": 2.0}} for r in rows])
    pool = _pool(paths)
    assert METHODS["selector_w0"].seeds_of(pool) == [0, 4]
    assert set(METHODS["selector_w0"].scorer(pool, 4).values()) == {2.0}


def test_downstream_tunes_the_selector_subset_of_its_own_seed(tmp_path: Path):
    from vital.bakeoff.downstream import subset_file

    paths = Paths(tmp_path)
    p = parse_params({"bakeoff": {"seeds": [0, 1, 2]}})
    paths.bakeoff.mkdir(parents=True)
    for name in ("selector-s0-40", "selector-s1-40"):
        (paths.bakeoff / f"{name}.json").write_text("[]")
    assert subset_file(p, paths, "selector", 1).name == "selector-s1-40.json"
    assert subset_file(p, paths, "selector", 2).name == "selector-s0-40.json"  # fewer trained: cycle
    assert subset_file(p, paths, "judge", 2).name == "judge-40.json"
    assert subset_file(p, paths, "random", 2).name == "random-s2-40.json"


def test_a_bad_scores_line_is_dropped_as_curate_drops_it(tmp_path: Path):
    """One rule for scores.jsonl wherever it is read: the bakeoff failed on a line curate dropped."""
    paths = tiny_world(tmp_path, figures=2)
    write_jsonl(
        paths.scores_by_weight,
        [{"candidate_id": "F00#0", "scores": {"0": 1.0}}, {"candidate_id": "F00#1", "scores": {"0": "high"}}],
    )
    pool = _pool(paths)
    assert METHODS["selector_w0"].scorer(pool, None) == {"F00#0": 1.0}
    assert pool.drops.counts == {"bad_line": 1}
    assert pool.drops.examples[0]["where"] == f"{paths.scores_by_weight}:2"


def test_bootstrap_gain_brackets_the_difference():
    m = np.array([0.0] * 80 + [1.0] * 20)
    r = [np.array([0.0] * 50 + [1.0] * 50)] * 3
    lo, hi = bootstrap_gain(m, r, 500)
    assert lo <= -0.3 <= hi and hi < 0
    assert bootstrap_gain(m, r, 0) is None
    # one method trained at three seeds that kept the same candidates is as uncertain as one subset
    ids = [f"c{i}" for i in range(100)]
    one, three = bootstrap_gain(m, r, 2000), bootstrap_gain([m, m, m], r, 2000, members=[ids] * 3)
    assert abs((three[1] - three[0]) - (one[1] - one[0])) < 0.15 * (one[1] - one[0])
    # seeds that kept different candidates widen it
    other = np.array([1.0] * 50 + [0.0] * 50)
    varied = bootstrap_gain([m, m, other], r, 2000, members=[ids, ids, [f"d{i}" for i in range(100)]])
    assert varied[1] - varied[0] > 1.5 * (one[1] - one[0])


# ------------------------------------------------------------------ IFD on a tiny LLaVA
@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> Path:
    from vital.llava.testing import tiny_base

    return tiny_base(tmp_path_factory.mktemp("ifd") / "base")


def test_ifd_losses_are_the_models_answer_cross_entropy(tiny_llava: Path):
    from vital.bakeoff.ifd import answer_losses, load_lm

    lm, tok = load_lm(str(tiny_llava))
    q, a = "Which side is the lesion on?", "The lesion is on the left."
    with_q, alone = answer_losses(lm, tok, [(q, a), ("", a)], max_length=64, batch_size=2)
    # the same figure computed by hand with the model's own loss (labels -100 outside the answer)
    p = tok(q + "\n", add_special_tokens=False)["input_ids"]
    ans = tok(" " + a, add_special_tokens=False)["input_ids"]
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    ids = torch.tensor([bos + p + ans])
    labels = torch.tensor([[-100] * (len(bos) + len(p)) + ans])
    with torch.no_grad():
        ref = lm(input_ids=ids, labels=labels).loss.item()
    assert with_q == pytest.approx(ref, rel=1e-4)
    assert alone != with_q and alone > 0


def test_ifd_scores_every_candidate_of_the_pool(world: Paths, tiny_llava: Path):
    pool = _pool(world)
    pool.bp = BakeoffParams(ifd_model=str(tiny_llava))
    scores = METHODS["ifd"].scorer(pool, 0)
    assert set(scores) == pool.ids and all(np.isfinite(v) for v in scores.values())


# ------------------------------------------------------------------ the stage end to end
def test_stage_writes_every_subset_quality_gain_and_cost(world: Paths):
    p = parse_params(
        {
            "bakeoff": {
                "methods": ["random", "length", "judge", "selector_w0", "selector", "clip"],
                "keep": [25, 50],
                "downstream_keep": 25,
                "downstream_methods": ["random", "judge"],
                "bootstrap": 200,
            }
        }
    )
    m = run(p, world)
    files = sorted(f.name for f in world.bakeoff.glob("*.json"))
    assert len(files) == 2 * (3 + 4 + 3) and "random-s2-25.json" in files and "judge-50.json" in files
    assert "selector-s2-50.json" in files and "selector-50.json" not in files
    judge25 = json.loads((world.bakeoff / "judge-25.json").read_text())
    assert len(judge25) == 10  # 25% of 40 figures, one candidate per figure (curate.policy)
    assert {r["id"].split("#")[1] for r in judge25} == {"0"}
    assert judge25[0]["provenance"]["method"] == "judge" and judge25[0]["provenance"]["keep"] == 25
    assert judge25[0]["conversations"][0]["value"].startswith("<image>")
    # known quality: judge and selector pick only accurate answers; length and CLIP only wrong sides
    q = {n: s["quality"] for n, s in m["subsets"].items()}
    assert q["judge-25"]["flawed"] == q["selector-s0-50"]["flawed"] == q["selector-s1-50"]["flawed"] == 0
    assert q["selector-s2-50"]["truncated"] == 1
    assert q["length-25"]["wrong_side"] == q["clip-25"]["wrong_side"] == 1
    assert q["selector_w0-25"]["hedging"] == 1
    assert 0 < np.mean([q[subset_name("random", 25, s)]["flawed"] for s in (0, 1, 2)]) < 1
    gain = m["vs_random"]["25"]["judge"]["flawed"]
    assert gain["value"] == 0 and gain["minus_random"]["mean"] < -0.4 and gain["wins"] == "3/3"
    assert gain["ci95"][1] < 0
    assert m["vs_random"]["25"]["length"]["flawed"]["wins"] == "0/3"
    # the selector over its three training seeds: the mean rates it, every seed meets every random seed,
    # and its interval widens with the seed that picked truncated answers
    sel = m["vs_random"]["50"]["selector"]["flawed"]
    assert m["trained_at_seeds"] == {"selector": [0, 1, 2]}
    assert sel["value_by_seed"] == {"0": 0.0, "1": 0.0, "2": 1.0} and sel["value"] == pytest.approx(
        1 / 3, abs=1e-4
    )
    assert sel["wins"].endswith("/9") and len(sel["minus_random"]["values"]) == 9
    judge_ci = m["vs_random"]["50"]["judge"]["flawed"]["ci95"]
    assert sel["ci95"][1] - sel["ci95"][0] > 2 * (judge_ci[1] - judge_ci[0])
    # cost: judge spend and clinician labels where a method uses them
    assert m["cost"]["judge"]["api_usd"] == 1.25 and m["cost"]["judge"]["clinician_labels"] == 0
    assert (
        m["cost"]["selector"]["clinician_labels"] == 17 and m["cost"]["selector_w0"]["clinician_labels"] == 0
    )
    assert m["cost"]["length"]["api_usd"] == 0 and m["cost"]["length"]["upstream_wall_seconds"] == 0
    plot = (world.plots / "bakeoff_quality.csv").read_text().splitlines()
    assert plot[0] == "keep,random,length,judge,selector_w0,selector,clip" and plot[1].startswith("25,")
    assert m["keep"] == [25, 50]
    # a smaller run leaves no stale subset behind
    run(
        p.model_copy(update={"bakeoff": p.bakeoff.model_copy(update={"methods": ["random", "judge"]})}), world
    )
    assert not (world.bakeoff / "length-25.json").exists()


def test_stage_without_quality_still_writes_subsets_and_cost(tmp_path: Path):
    paths = tiny_world(tmp_path, figures=8)
    p = parse_params(
        {"bakeoff": {"methods": ["random", "judge"], "downstream_methods": ["random"], "quality": "none"}}
    )
    m = run(p, paths)
    assert "vs_random" not in m and m["headline"] is None and m["subsets"]["judge-40"]["records"] == 3
    with pytest.raises(
        ParamsError, match=r"bakeoff.quality: unknown 'oracle'; choose one of \['none', 'truth'\]"
    ):
        run(parse_params({"bakeoff": {"quality": "oracle"}}), paths)  # refused at load, before the stage runs


def test_a_malformed_candidate_line_is_skipped_and_counted_like_every_stage(tmp_path: Path):
    paths = tiny_world(tmp_path, figures=8)
    with paths.candidates.open("a", encoding="utf-8") as f:
        f.write("{not json\n" + json.dumps({"id": "x"}) + "\n")
    p = parse_params(
        {"bakeoff": {"methods": ["random", "judge"], "downstream_methods": ["random"], "quality": "none"}}
    )
    m = run(p, paths)
    assert m["dropped"] == 2 and m["dropped_by_reason"] == {"bad_line": 2}
    assert [e["where"] for e in m["dropped_examples"]] == [f"{paths.candidates}:33", f"{paths.candidates}:34"]
    assert m["subsets"]["judge-40"]["records"] == 3  # the 32 good candidates still make every subset


# ------------------------------------------------------------------ downstream: tune per method and seed, evaluate
def test_downstream_tunes_each_method_subset_and_reports_over_seeds(tmp_path: Path, tiny_llava: Path):
    from vital.bakeoff.downstream import evaluate_stage, subset_file, tune_stage
    from vital.llava.testing import side_records, write_llava_json

    paths = Paths(tmp_path)
    records = side_records(paths.corpus, 8)
    bake = {
        "methods": ["random", "judge"],
        "downstream_methods": ["random", "judge"],
        "seeds": [0],
        "keep": [40],
        "downstream_keep": 40,
    }
    vqa = paths.vqa / "tiny"
    (vqa / "images").mkdir(parents=True)
    questions = []
    for i, r in enumerate(records[:4]):
        (vqa / r["image"]).write_bytes((paths.corpus / r["image"]).read_bytes())
        side = r["conversations"][1]["value"]
        q = {"question_id": f"q{i}", "image": r["image"], "question": "Is the lesion on the left?"}
        questions.append({**q, "answer": "yes" if side == "left" else "no", "answer_type": "CLOSED"})
        questions.append(
            {**q, "question_id": f"o{i}", "question": "Which side?", "answer": side, "answer_type": "OPEN"}
        )
    write_jsonl(vqa / "questions.jsonl", questions)
    p = parse_params(
        {
            "bakeoff": bake,
            "tune": {"base": str(tiny_llava), "max_steps": 2, "batch_size": 4, "seeds": [0], "keep": 40},
            "curate": {"keep": [40]},
            "evaluate": {
                "sets": [{"name": "tiny", "format": "demo", "path": str(vqa / "questions.jsonl")}],
                "device": "cpu",
                "max_new_tokens": 4,
                "hallucination": "none",  # a hand-made set: the world's held-out figures are not there
            },
            "finetune": {"sets": []},
        }
    )
    for method in ("random", "judge"):
        write_llava_json(subset_file(p, paths, method, 0), records[:4] if method == "judge" else records[4:])
        tune_stage(p, paths, method, 0)
        assert (paths.root / "models" / "bakeoff" / f"{method}-s0" / "config.json").is_file()
    with pytest.raises(ValueError, match="not one of bakeoff.downstream_methods"):
        tune_stage(p, paths, "length", 0)
    out = evaluate_stage(p, paths)
    row = out["tiny"]
    assert set(row) == {"random", "judge"}
    seed0 = row["judge"]["per_seed"][0]
    assert {"closed_accuracy", "closed_accuracy_legacy", "open_recall", "yes_no_likelihood_accuracy"} <= set(
        seed0
    )
    assert 0 <= seed0["yes_no_likelihood_accuracy"] <= 1
    assert "closed_accuracy" in row["judge"]["minus_random"] and "NOT LLaVA-Med" in out["note"]
    assert (paths.plots / "bakeoff_downstream.csv").read_text().startswith("set,method,closed_accuracy")
