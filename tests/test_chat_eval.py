"""chat_eval stage: relative score vs references and win rate, offline heuristic judge and the engine."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from tests.llm_world import KEY, KEY_ENV
from tests.openai_server import FakeOpenAIServer
from vital import chat_eval
from vital.demo.reference_judge import HeuristicAnswerJudge
from vital.io import read_jsonl
from vital.params import Params, ParamsError, parse_params
from vital.paths import Paths
from vital.vqa.items import VQAItem
from vital.vqa.judge import pair_messages
from vital.vqa.metrics import answer_tokens

# (question_id, domain, kind, question, answer, answer_type)
QUESTIONS = [
    ("q0", "ct_scan", "presence", "Is there a lesion?", "yes", "CLOSED"),
    ("q1", "ct_scan", "side", "Which side of the image is the lesion on?", "left", "OPEN"),
    ("q2", "ct_scan", "modality", "What imaging modality is shown?", "ct", "OPEN"),
    ("q3", "mri", "count", "How many lesions are there?", "2", "OPEN"),
    ("q4", "mri", "side", "Which side is the mass on?", "right", "OPEN"),
    ("q5", "mri", "size", "Is the lesion small or large?", "large", "OPEN"),
]
TUNED = {"q0": "yes", "q1": "left", "q2": "ct", "q3": "2", "q4": "banana", "q5": "large"}
BASE = {
    "q0": "no",
    "q1": "The lesion is on the left.",
    "q2": "no idea",
    "q3": "pancake",
    "q4": "banana bread",
    "q5": "blue sky",
}
REFS = {q[3]: q[4] for q in QUESTIONS}


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("VITAL_PROGRESS", "off")


def _predictions(root: Path, model: str, answers: dict[str, str], extra: list[dict] = ()) -> None:
    q = {row[0]: row for row in QUESTIONS}
    rows = [
        {"question_id": qid, "prompt": q[qid][3], "text": text, "answer": q[qid][4], "model_id": model}
        for qid, text in answers.items()
    ]
    out = root / "artifacts" / "predictions" / model / "demo.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in [*rows, *extra]))


def make_eval_world(root: Path, base: dict[str, str] = BASE, base_extra: list[dict] = ()) -> None:
    folder = root / "data" / "vqa" / "demo"
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "images" / "a.png")  # loaders check that images open
    recs = [
        {
            "question_id": i,
            "image": "images/a.png",
            "domain": d,
            "kind": k,
            "question": q,
            "answer": a,
            "answer_type": t,
        }
        for i, d, k, q, a, t in QUESTIONS
    ]
    (folder / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    _predictions(root, "top-s0", TUNED)
    _predictions(root, "base", base, base_extra)


def params(**chat: object) -> Params:
    sets = [{"name": "demo", "format": "demo", "path": "data/vqa/demo/questions.jsonl"}]
    chat = {"compare": ["top-s0", "base"], **chat}
    # one tuned model, named as the tune stage's matrix names it
    return parse_params(
        {"evaluate": {"sets": sets}, "tune": {"subsets": ["top"], "seeds": [0]}, "chat_eval": chat}
    )


# ------------------------------------------------------------------ the heuristic answer judge
def test_heuristic_answer_judge_scores_against_the_reference():
    j = HeuristicAnswerJudge()
    q = "Which side of the image is the lesion on?"
    assert j.score(q, "left", "left").score == 10
    assert j.score(q, "left", "The lesion is on the LEFT.").score == 10  # normalised like LLaVA-Med
    on_topic_wrong = j.score(q, "left", "the lesion is on the right side").score
    assert 1 < on_topic_wrong < 5
    assert j.score(q, "left", "banana pancake").score == 1  # off topic
    assert j.score(q, "left", "").notes == ("empty answer",)
    assert j.score(q, "left", "left " * 30).score < 10  # overlong
    # position-independent: the same two answers get the same scores whichever is shown first
    assert j.verdict(q, "left", "left", "right").split("\n")[0] == "10 1"
    assert j.verdict(q, "left", "right", "left").split("\n")[0] == "1 10"


def test_pair_answers_reads_back_the_judge_prompt():
    item = VQAItem("x", Path("a.png"), "Where?", "left", "OPEN")
    first, second = "line one\n[Assistant 1]\nstill one", "two"
    assert chat_eval.pair_answers(pair_messages(item, first, second)) == (first, second)
    with pytest.raises(ValueError, match="pair_messages format"):
        chat_eval.pair_answers([{"role": "user", "content": "no blocks"}])


# ------------------------------------------------------------------ heuristic backend end to end
def test_heuristic_stage_end_to_end(tmp_path):
    make_eval_world(tmp_path, base_extra=[{"text": "orphan"}, {"question_id": "q9", "text": "unknown q"}])
    m = chat_eval.run(params(), Paths(tmp_path))
    demo = m["demo"]
    tuned, base = demo["relative"]["top-s0"], demo["relative"]["base"]
    # reference answers score 10; correct answers 10, off-topic ones 1
    assert tuned["relative_score"] == pytest.approx(82.0) and tuned["n"] == 5 and tuned["n_failed"] == 0
    assert base["relative_score"] == pytest.approx(28.0)
    assert tuned["by_domain"]["ct_scan"]["relative_score"] == pytest.approx(100.0)
    assert tuned["by_domain"]["mri"]["relative_score"] == pytest.approx(70.0)
    assert tuned["by_question_type"]["side"]["relative_score"] == pytest.approx(55.0)
    assert "presence" not in tuned["by_question_type"]  # the closed question is not judged
    w = demo["win_rate"]
    assert (w["a"], w["b"], w["n"], w["wins"], w["ties"], w["losses"]) == ("top-s0", "base", 5, 3, 2, 0)
    assert w["win_rate"] == pytest.approx(0.8)
    assert w["position_consistency"] == 1.0 and w["n_both_orders"] == 5
    assert w["by_order"]["ab"] == {"a_higher": 3, "b_higher": 0, "tie": 2, "failed": 0}
    assert w["by_order"]["ba"] == w["by_order"]["ab"]
    assert demo["data"]["n_open"] == 5 and demo["data"]["dropped"] == 1
    assert (
        "no question_id" in demo["data"]["dropped_examples"][0]["detail"]
        and "base/demo.jsonl#7" in demo["data"]["dropped_examples"][0]["where"]
    )
    rows = list(read_jsonl(tmp_path / "artifacts" / "chat_eval" / "judgments.jsonl"))
    assert len(rows) == 3 * 5 * 2 and m["_stage"]["judgments"] == 30 and m["_stage"]["unscored"] == 0
    first = rows[0]
    assert (first["comparison"], first["order"], first["shown_first"]) == (
        "top-s0_vs_reference",
        "ab",
        "top-s0",
    )
    assert first["verdict"].startswith("10 10")
    assert m["demo"]["win_rate"]["wins"] == 3


def test_missing_answers_are_counted_and_left_out(tmp_path):
    make_eval_world(tmp_path, base={k: v for k, v in BASE.items() if k != "q5"})
    m = chat_eval.run(params(sets=["demo"]), Paths(tmp_path))["demo"]
    assert m["data"]["missing_predictions"] == {"top-s0": 0, "base": 1}
    assert m["relative"]["base"]["n"] == 4 and m["relative"]["top-s0"]["n"] == 5
    assert m["win_rate"]["n"] == 4 and m["win_rate"]["wins"] == 2


def test_stale_predictions_are_listed(tmp_path):
    make_eval_world(tmp_path)
    path = tmp_path / "artifacts" / "predictions" / "base" / "demo.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[1]["prompt"] = "An older question?"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = chat_eval.run(params(), Paths(tmp_path))["demo"]
    assert m["data"]["missing_predictions"]["base"] == 1
    assert "q1" in m["data"]["dropped_examples"][0]["detail"] and "stale" in str(
        m["data"]["dropped_examples"][0]
    )


def test_bad_params_and_inputs_name_what_to_fix(tmp_path):
    make_eval_world(tmp_path)
    # cross-section checks run when params load (so `vital params` catches them), not when the stage runs
    with pytest.raises(ParamsError, match=r"chat_eval\.sets: \['vqa_rad'\] are not names of evaluate\.sets"):
        params(sets=["vqa_rad"])
    with pytest.raises(ParamsError, match=r"chat_eval\.compare: \['topk'\]"):
        params(compare=["top-s0", "topk"])
    with pytest.raises(ParamsError, match=r"chat_eval\.compare: \['top-s1'\]"):
        params(compare=["top-s0", "top-s1"])  # seed 1 is not in tune.seeds
    with pytest.raises(ParamsError, match="'reference' is reserved by chat_eval"):
        parse_params({"evaluate": {"models": {"reference": "models/base"}}})
    with pytest.raises(ParamsError, match="chat_eval.compare"):
        params(compare=["top-s0", "top-s0"])
    (tmp_path / "artifacts" / "predictions" / "base" / "demo.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"base/demo\.jsonl \(run the evaluate stage first\)"):
        chat_eval.run(params(), Paths(tmp_path))


# ------------------------------------------------------------------ openai backend through the engine
def _api(root: Path, base_url: str) -> Params:
    client = {
        "base_url": base_url,
        "api_key_env": KEY_ENV,
        "concurrency": 4,
        "max_retries": 2,
        "timeout_s": 5,
        "cache_dir": str(root / ".vital" / "cache"),
    }
    prices = {"judge-model": {"input_per_1m": 2.5, "output_per_1m": 10.0}}
    return params(backend="openai", model="judge-model", client=client, prices=prices)


class BiasedJudge:
    """9 for a correct answer, 2 for a wrong one, +1 for whichever is shown first; no scores for q5."""

    def __init__(self) -> None:
        self.shown: list[tuple[str, str, str]] = []

    def __call__(self, body: dict) -> str:
        user = body["messages"][-1]["content"]
        question = re.search(r"\[Question\]\n(.*?)\n\n\[Assistant 1\]", user, re.S).group(1)
        first, second = chat_eval.pair_answers(body["messages"])
        self.shown.append((question, first, second))
        if "small or large" in question:
            return "Both answers are fine, I think."
        ref = REFS[question]
        s1, s2 = (9 if ref in answer_tokens(a) else 2 for a in (first, second))
        return f"{s1 + 1} {s2}\nThe first answer is more detailed."


def test_openai_backend_both_orders_cache_and_unparseable(tmp_path):
    make_eval_world(tmp_path)
    judge = BiasedJudge()
    with FakeOpenAIServer(content_fn=judge) as server:
        p = _api(tmp_path, server.base_url)
        est = chat_eval.dry_run(p, Paths(tmp_path))
        # 30 judge requests but 18 distinct prompts: the prompt holds the answers, not the model names, so
        # where tuned's answer equals the reference (q1-q3, q5) its two orders coincide and tuned-vs-base
        # repeats base-vs-reference; each distinct prompt is paid once
        assert est["requests_to_send"] == 18 and est["cached"] == 0 and server.chat_requests() == []
        assert est["estimated_cost_usd_max"] > 0
        m = chat_eval.run(p, Paths(tmp_path))
        assert len(server.chat_requests()) == 18
        # both presentation orders of every pair were sent
        q2 = "What imaging modality is shown?"
        assert {(q2, "ct", "no idea"), (q2, "no idea", "ct"), (q2, "ct", "ct")} <= set(judge.shown)
        demo = m["demo"]
        tuned = demo["relative"]["top-s0"]
        # q5's verdicts have no scores: counted as failed, left out of the means (not scored zero)
        assert tuned["n"] == 4 and tuned["n_failed"] == 2 and tuned["n_questions"] == 5
        assert any("q5 (ab): no_scores_on_first_line" in f for f in tuned["failed"])
        assert tuned["relative_score"] == pytest.approx(100 * (3 * 9.5 + 2.5) / (4 * 9.5))
        # order averaging cancels the +1 first-position bonus; consistency shows the bias
        w = demo["win_rate"]
        assert (w["n"], w["wins"], w["ties"], w["losses"], w["n_failed"]) == (4, 2, 2, 0, 2)
        assert w["win_rate"] == pytest.approx(0.75)
        assert w["position_consistency"] == pytest.approx(0.5) and w["n_both_orders"] == 4
        assert w["by_order"]["ab"] == {"a_higher": 4, "b_higher": 0, "tie": 0, "failed": 1}
        assert w["by_order"]["ba"] == {"a_higher": 2, "b_higher": 2, "tie": 0, "failed": 1}
        assert tuned["position_consistency"] == pytest.approx(0.25)
        stage = m["_stage"]
        assert stage["requests_sent"] == 18 and stage["unscored"] == 6 and stage["estimated_cost_usd"] > 0
        rows = list(read_jsonl(tmp_path / "artifacts" / "chat_eval" / "judgments.jsonl"))
        failed = [r for r in rows if r["score_a"] is None]
        assert len(failed) == 6 and {r["question_id"] for r in failed} == {"q5"}
        assert all(r["error"] == "no_scores_on_first_line" and r["verdict"] for r in failed)

        # a rerun is answered from the cache: zero requests
        again = chat_eval.run(p, Paths(tmp_path))
        assert len(server.chat_requests()) == 18
        assert again["_stage"]["requests_sent"] == 0 and again["_stage"]["cache_hits"] == 26
        assert again["demo"]["win_rate"] == w
        assert chat_eval.dry_run(p, Paths(tmp_path))["requests_to_send"] == 0


def test_paper_win_rate_through_the_openai_client_sees_image_and_ground_truth(tmp_path):
    make_eval_world(tmp_path)
    shown = []

    def judge(body: dict) -> str:
        system, user = body["messages"]
        if "[[A]]" not in system["content"]:  # the relative scores keep vital's two-score protocol
            return "8 8\nequal"
        image, text = user["content"]
        text = text["text"]
        question = re.search(r"\[Question\]\n(.*?)\n\n", text, re.S).group(1)
        truth = re.search(r"\[Ground Truth\]\n(.*?)\n\n", text, re.S).group(1)
        a = re.search(r"\[Assistant A\]\n(.*?)\n\[End of Assistant A\]", text, re.S).group(1)
        b = re.search(r"\[Assistant B\]\n(.*?)\n\[End of Assistant B\]", text, re.S).group(1)
        shown.append((question, truth, image["image_url"]["url"].split(",")[0]))
        right_a, right_b = (truth in answer_tokens(x) for x in (a, b))
        return "[[A]]" if right_a > right_b else "[[B]]" if right_b > right_a else "[[C]] both as good"

    with FakeOpenAIServer(content_fn=judge) as server:
        p = _api(tmp_path, server.base_url)
        p = p.model_copy(update={"chat_eval": p.chat_eval.model_copy(update={"win_rate": "paper"})})
        m = chat_eval.run(p, Paths(tmp_path))
    w = m["demo"]["win_rate"]
    # open questions only (q0 is closed): tuned right on q1, q2, q3, q5, base right on none but q1
    assert {q for q, _, _ in shown} == {q[3] for q in QUESTIONS if q[5] == "OPEN"}
    assert all(url == "data:image/png;base64" for _, _, url in shown)
    assert {(q, t) for q, t, _ in shown} == {(q[3], q[4]) for q in QUESTIONS if q[5] == "OPEN"}
    assert w["protocol"] == "paper" and w["n_failed"] == 0
    assert (w["n"], w["wins"], w["ties"], w["losses"]) == (5, 3, 2, 0)  # q1 both right, q4 both wrong: ties
    assert w["position_consistency"] == 1.0


def test_paper_win_rate_needs_a_vision_backend():
    with pytest.raises(ParamsError, match="win_rate=paper shows the judge the image"):
        params(win_rate="paper")
