"""The evaluate stage: models x sets -> predictions and metrics/evaluate.json; seed summaries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from vital import stats
from vital.evaluate import (
    compare_subsets,
    evaluate_models,
    resolve_model,
    run,
    run_finetuned,
    seed_difference,
    summarize_seeds,
)
from vital.params import parse_params
from vital.paths import Paths
from vital.pipeline import STAGES
from vital.stage import call
from vital.vqa.loaders import load_set

REPO = Path(__file__).resolve().parents[1]

QUESTIONS = [
    # id, question, answer, type, domain
    ("d0", "Is there a lesion?", "yes", "CLOSED", "ct_scan"),
    ("d1", "Is there a lesion?", "no", "CLOSED", "ct_scan"),
    ("d2", "Is the lesion on the left?", "no", "CLOSED", "mri"),
    ("d3", "Is the lesion on the left?", "yes", "CLOSED", "mri"),
    ("d4", "Which side is the lesion on?", "left", "OPEN", "mri"),
    ("d5", "How many lesions are there?", "two", "OPEN", "ct_scan"),
]


def write_demo_set(root: Path) -> Path:
    folder = root / "data" / "vqa" / "demo"
    (folder / "images").mkdir(parents=True)
    rows = []
    for i, (qid, q, a, kind, domain) in enumerate(QUESTIONS):
        Image.new("RGB", (32, 32), (40 * i, 100, 100)).save(folder / "images" / f"{qid}.png")
        rows.append(
            {
                "question_id": qid,
                "image": f"images/{qid}.png",
                "question": q,
                "answer": a,
                "answer_type": kind,
            }
            | {"domain": domain}
        )
    path = folder / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


class ScriptedAnswerer:
    """Stands in for a model: answers from a table keyed by question id."""

    def __init__(self, model_id: str, table: dict[str, str]):
        self.model_id = model_id
        self.table = table
        self.calls = 0

    def answer(self, items, batch_size, max_new_tokens, desc):
        self.calls += 1
        return [self.table.get(i.question_id, "") for i in items]


# "tuned" is right everywhere; "base" says "normal"/"No, ..." styles that split legacy from corrected
TUNED = {"d0": "Yes.", "d1": "No", "d2": "no,", "d3": "yes", "d4": "The left side", "d5": "2 lesions"}
BASE = {"d0": "normal", "d1": "normal", "d2": "yes", "d3": "Yes, no doubt", "d4": "right", "d5": "one"}


def _factory(model):
    name = Path(str(model)).name
    return ScriptedAnswerer(name, TUNED if name == "top-s0" else BASE)


def _fake_checkpoints(root: Path) -> None:
    for name in ("tuned/top-s0", "base"):
        (root / "models" / name).mkdir(parents=True)
        (root / "models" / name / "config.json").write_text("{}")


# one tuned model, named and placed as the tune stage's matrix does
ONE_TUNE = {
    "tune": {"subsets": ["top"], "seeds": [0]},
    "chat_eval": {"compare": ["top-s0", "base"]},
    "evaluate": {"hallucination": "none"},  # a hand-built set: none of the world's held-out figures
}


def test_run_writes_metrics_and_predictions_hand_computed(tmp_path):
    write_demo_set(tmp_path)
    _fake_checkpoints(tmp_path)
    params = parse_params(ONE_TUNE)
    out = call(STAGES["evaluate"], params, Paths(tmp_path), answerer=_factory)

    evidence = stats.read(tmp_path, "evaluate")
    on_file = evidence["detail"]
    assert on_file == json.loads(json.dumps(out))
    demo = on_file["demo"]
    tuned, base = demo["top-s0"], demo["base"]
    assert (tuned["n_closed"], tuned["n_open"]) == (4, 2)
    assert tuned["closed_accuracy"] == 1.0 and tuned["closed_accuracy_legacy"] == 1.0
    assert tuned["open_recall"] == 1.0  # "left" in "the left side"; "two" -> "2" in "2 lesions"
    # base: d0 "normal" vs yes: miss both; d1 "normal" vs no: legacy hit ("no" in "normal"), corrected miss;
    # d2 "yes" vs no: miss both; d3 "Yes, no doubt" vs yes: hit both
    assert base["closed_accuracy"] == pytest.approx(1 / 4)
    assert base["closed_accuracy_legacy"] == pytest.approx(2 / 4)
    # d4 "right" vs "left": 0; d5 "one" -> "1" vs "2": 0
    assert base["open_recall"] == 0.0
    assert base["by_domain"]["ct_scan"]["closed_accuracy_legacy"] == pytest.approx(1 / 2)
    assert demo["chance"] == {"n_closed": 4, "closed_chance": 0.5, "closed_majority": 0.5}
    assert demo["data"]["n_items"] == 6 and demo["data"]["dropped"] == 0
    assert on_file["_stage"]["models"] == {"top-s0": "models/tuned/top-s0", "base": "models/base"}
    assert evidence["wall_s"] >= 0
    top = stats.read_headline(tmp_path, "evaluate")["demo"]["top"]
    assert top == {"closed_accuracy": 1.0, "open_recall": 1.0}  # one seed: its own figures

    rows = [
        json.loads(x) for x in (tmp_path / "artifacts/predictions/base/demo.jsonl").read_text().splitlines()
    ]
    assert [r["question_id"] for r in rows] == [q[0] for q in QUESTIONS]
    assert rows[1]["text"] == "normal" and rows[1]["answer"] == "no"
    assert rows[1]["scores"] == {"closed_accuracy": 0.0, "closed_accuracy_legacy": 1.0}
    assert (tmp_path / "artifacts/predictions/top-s0/demo.jsonl").is_file()


def test_each_model_is_loaded_once_for_all_sets(tmp_path):
    path = write_demo_set(tmp_path)
    sets = [load_set("a", "demo", path), load_set("b", "demo", path)]
    made = []

    def factory(model):
        made.append(ScriptedAnswerer(str(model), TUNED))
        return made[-1]

    res = evaluate_models({"m1": "x", "m2": "y"}, sets, answerer=factory)
    assert [a.calls for a in made] == [2, 2]
    assert set(res) == {"a", "b"} and set(res["a"]) == {"m1", "m2", "chance", "data"}
    with pytest.raises(ValueError, match=r"\['chance'\] are reserved"):
        evaluate_models({"chance": "x"}, sets, answerer=factory)


def test_resolve_model(tmp_path):
    assert resolve_model("base", "llava-hf/llava-1.5-13b-hf", tmp_path) == "llava-hf/llava-1.5-13b-hf"
    with pytest.raises(
        FileNotFoundError, match=r"evaluate\.models\.tuned: .*models/tuned is not a model checkpoint"
    ):
        resolve_model("tuned", "models/tuned", tmp_path)
    _fake_checkpoints(tmp_path)
    assert resolve_model("t", "models/tuned/top-s0", tmp_path) == tmp_path / "models" / "tuned" / "top-s0"


def test_missing_eval_file_is_named(tmp_path):
    _fake_checkpoints(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"set 'demo': question file not found: .*questions\.jsonl"):
        run(parse_params(ONE_TUNE), Paths(tmp_path), answerer=_factory)


def test_duplicate_set_names_are_rejected_by_params():
    from vital.params import ParamsError

    s = {"name": "x", "format": "demo", "path": "a.jsonl"}
    with pytest.raises(ParamsError, match=r"duplicate set names \['x'\]"):
        parse_params({"evaluate": {"sets": [s, s]}})


def test_summarize_seeds_and_difference_hand_computed():
    topk = {
        0: {"closed_accuracy": 0.8, "n_closed": 10, "by_domain": {"mri": {"closed_accuracy": 1.0}}},
        1: {"closed_accuracy": 0.6, "n_closed": 10, "by_domain": {"mri": {"closed_accuracy": 0.5}}},
        2: {"closed_accuracy": 0.7, "n_closed": 10, "by_domain": {}},
    }
    s = summarize_seeds(topk)
    assert s["closed_accuracy"]["mean"] == pytest.approx(0.7)
    assert s["closed_accuracy"]["std"] == pytest.approx(0.1)  # sample std of .8/.6/.7
    assert (s["closed_accuracy"]["min"], s["closed_accuracy"]["max"], s["closed_accuracy"]["n"]) == (
        0.6,
        0.8,
        3,
    )
    assert s["by_domain"]["mri"]["closed_accuracy"]["mean"] == pytest.approx(0.75)
    assert s["by_domain"]["mri"]["closed_accuracy"]["n"] == 2
    assert s["n_closed"]["std"] == 0.0

    random = {0: {"closed_accuracy": 0.7}, 1: {"closed_accuracy": 0.6}, 2: {"closed_accuracy": 0.5}, 3: {}}
    d = seed_difference(topk, random, "closed_accuracy")
    assert d["mean"] == pytest.approx((0.1 + 0.0 + 0.2) / 3)
    assert (d["n"], d["wins"], d["ties"]) == (3, 2, 1)
    with pytest.raises(ValueError, match="no seeds"):
        summarize_seeds({})


def test_stage_script_reports_a_missing_model_clearly(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"evaluate": {"batch_size": 4}}))
    proc = subprocess.run(
        [sys.executable, str(REPO / "stages" / "evaluate.py")], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "[evaluate] error: evaluate.models.base:" in proc.stderr and "no config.json" in proc.stderr


@pytest.mark.slow
def test_run_end_to_end_with_tiny_llava_checkpoints(tmp_path):
    from test_vqa_inference import build_tiny_llava

    write_demo_set(tmp_path)
    build_tiny_llava(tmp_path / "models" / "tuned" / "top-s0", seed=0)
    build_tiny_llava(tmp_path / "models" / "base", seed=1)
    # a hand-made set, not the world's figures: no hidden truth to check descriptions against
    ev = {"batch_size": 4, "max_new_tokens": 4, "device": "cpu", "hallucination": "none"}
    params = parse_params({"evaluate": ev, **ONE_TUNE})
    out = run(params, Paths(tmp_path))
    for model in ("top-s0", "base"):
        summary = out["demo"][model]
        assert (summary["n_closed"], summary["n_open"]) == (4, 2)
        for key in ("closed_accuracy", "closed_accuracy_legacy", "open_recall", "open_f1"):
            assert 0.0 <= summary[key] <= 1.0
        rows = (tmp_path / "artifacts" / "predictions" / model / "demo.jsonl").read_text().splitlines()
        assert len(rows) == 6 and json.loads(rows[0])["model_id"].endswith(model)


def test_top_versus_random_over_seeds():
    per_model = {
        "top-s0": {"closed_accuracy": 0.8, "closed_discrimination": 0.6, "open_recall": 0.5},
        "top-s1": {"closed_accuracy": 0.7, "closed_discrimination": 0.4, "open_recall": 0.5},
        "random-s0": {"closed_accuracy": 0.6, "closed_discrimination": 0.2, "open_recall": 0.5},
        "random-s1": {"closed_accuracy": 0.7, "closed_discrimination": 0.4, "open_recall": 0.4},
        "base": {"closed_accuracy": 0.5, "open_recall": 0.0},
    }
    out = compare_subsets(per_model, ["top", "random"], [0, 1])
    assert out["top_over_seeds"]["closed_accuracy"]["mean"] == pytest.approx(0.75)
    assert out["random_over_seeds"]["closed_accuracy"]["n"] == 2
    gain = out["top_minus_random"]["closed_accuracy"]
    assert gain["mean"] == pytest.approx(0.1) and (gain["wins"], gain["ties"]) == (1, 1)
    assert out["top_minus_random"]["open_recall"]["mean"] == pytest.approx(0.05)
    assert out["top_minus_random"]["closed_discrimination"]["mean"] == pytest.approx(0.2)
    assert out["top_over_seeds"]["closed_discrimination"]["mean"] == pytest.approx(0.5)
    assert "top_minus_random" not in compare_subsets(per_model, ["top"], [0, 1])


def test_finetuned_models_are_scored_on_their_set_beside_the_base_control(tmp_path):
    write_demo_set(tmp_path)
    for name in ("top-s0", "base-s0", "top-s1", "base-s1"):
        (tmp_path / "models" / "finetuned" / name / "demo").mkdir(parents=True)
        (tmp_path / "models" / "finetuned" / name / "demo" / "config.json").write_text("{}")

    def factory(model):  # the fine-tuned top models answer right, the fine-tuned base like BASE
        path = Path(str(model))
        return ScriptedAnswerer(str(path), TUNED if path.parent.name.startswith("top") else BASE)

    params = parse_params(
        {"tune": {"subsets": ["top"], "seeds": [0, 1]}, "chat_eval": {"compare": ["top-s0", "top-s1"]}}
    )
    out = call(STAGES["evaluate_finetuned"], params, Paths(tmp_path), answerer=factory)
    ft = out["demo"]
    expected = {
        "top-s0",
        "top-s1",
        "base-s0",
        "base-s1",
        "top_over_seeds",
        "base_over_seeds",
        "top_minus_base",
    }
    assert expected <= set(ft)
    assert ft["top-s0"]["closed_accuracy"] == 1.0 and ft["base-s1"]["closed_accuracy"] == pytest.approx(1 / 4)
    gain = ft["top_minus_base"]["closed_accuracy"]
    assert gain["mean"] == pytest.approx(3 / 4) and (gain["n"], gain["wins"]) == (2, 2)
    assert ft["chance"]["closed_chance"] == 0.5
    assert (tmp_path / "artifacts/predictions_finetuned/top-s1/demo.jsonl").is_file()
    assert out["_stage"]["models"]["base-s0"] == "models/finetuned/base-s0/<set>"
    on_file = stats.detail(tmp_path, "evaluate_finetuned")
    assert on_file == json.loads(json.dumps(out))


def test_missing_finetuned_checkpoint_fails_before_any_answer(tmp_path):
    write_demo_set(tmp_path)
    (tmp_path / "models" / "finetuned" / "top-s0" / "demo").mkdir(parents=True)
    (tmp_path / "models" / "finetuned" / "top-s0" / "demo" / "config.json").write_text("{}")
    made = []

    def factory(model):
        made.append(model)
        return ScriptedAnswerer(str(model), TUNED)

    with pytest.raises(
        FileNotFoundError, match=r"finetuned/base-s0/demo: no fine-tuned checkpoint.*dvc repro"
    ):
        run_finetuned(parse_params(ONE_TUNE), Paths(tmp_path), answerer=factory)
    assert made == []


def test_no_finetune_sets_scores_nothing(tmp_path):
    write_demo_set(tmp_path)
    out = run_finetuned(
        parse_params({**ONE_TUNE, "finetune": {"sets": []}}), Paths(tmp_path), answerer=_factory
    )
    assert set(out) == {"_stage"} and out["_stage"]["models"] == {}


def test_finetune_set_must_name_an_evaluate_set():
    from vital.params import ParamsError

    s = {"name": "vqa_rad", "format": "vqa_rad", "path": "x.json", "split": "train"}
    with pytest.raises(
        ParamsError, match=r"finetune\.sets\[0\]\.name='vqa_rad' is not one of evaluate\.sets"
    ):
        parse_params({"finetune": {"sets": [s]}})


def test_finetune_on_the_test_split_is_refused():
    from vital.params import ParamsError

    test = {"name": "slake", "format": "slake", "path": "slake/test.json"}
    with pytest.raises(
        ParamsError, match=r"finetune\.sets\[0\] \(slake/test\.json.*train on the test questions"
    ):
        parse_params({"evaluate": {"sets": [test]}, "finetune": {"sets": [test]}})
    rad = {"name": "rad", "format": "vqa_rad", "path": "rad.json"}
    with pytest.raises(ParamsError, match="train on the test questions"):
        parse_params({"evaluate": {"sets": [rad]}, "finetune": {"sets": [rad]}})  # both split: test
    ok = parse_params({"evaluate": {"sets": [rad]}, "finetune": {"sets": [{**rad, "split": "train"}]}})
    assert ok.finetune.sets[0].split == "train"
