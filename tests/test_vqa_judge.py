"""Judge-scored chat evaluation: both presentation orders, relative score, win rate (scripted judge)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vital.llm.engine import Outcome
from vital.vqa.items import VQAItem
from vital.vqa.judge import (
    judge_pairs,
    pair_messages,
    parse_pair_scores,
    parse_verdict,
    relative_scores,
    win_rate,
)

QUALITY = {"good": 8.0, "ok": 6.0, "bad": 2.0, "ref": 8.0}


def biased_judge(bias: float = 1.0, broken: set[str] | None = None):
    """Scores each answer by a quality table and adds ``bias`` to whichever answer is shown first."""
    seen = []

    def send(requests, desc):
        out = []
        for req in requests:
            seen.append(req)
            text = req.body["messages"][1]["content"]
            first = text.split("[Assistant 1]\n")[1].split("\n")[0]
            second = text.split("[Assistant 2]\n")[1].split("\n")[0]
            qid = req.tag[0].question_id
            if broken and qid in broken:
                content = "I cannot rate these."
            else:
                content = f"{QUALITY[first] + bias:g} {QUALITY[second]:g}\nBecause."
            response = {"choices": [{"message": {"content": content}, "finish_reason": "stop"}]}
            out.append(Outcome(req, response))
        return out

    send.seen = seen
    return send


def _items():
    mk = VQAItem
    return [
        mk(
            "q1",
            Path("a.png"),
            "What is shown?",
            "ref",
            "OPEN",
            domain="ct_scan",
            question_type="conversation",
        ),
        mk("q2", Path("b.png"), "Describe it.", "ref", "OPEN", domain="ct_scan", question_type="detailed"),
        mk("q3", Path("c.png"), "Where?", "ref", "OPEN", domain="mri", question_type="conversation"),
    ]


def test_parse_pair_scores():
    assert parse_pair_scores("8 6\nbecause") == (8.0, 6.0)
    assert parse_pair_scores("7.5, 9") == (7.5, 9.0)
    assert parse_pair_scores("Assistant 1 gets 8") is None
    assert parse_pair_scores("11 3") is None
    assert parse_pair_scores("") is None


def test_prompt_carries_caption_question_and_both_answers():
    item = VQAItem("q", Path("x.png"), "What is seen?", "ref", "OPEN", extra={"fig_caption": "Axial CT."})
    msgs = pair_messages(item, "first answer", "second answer")
    user = msgs[1]["content"]
    assert "Axial CT." in user and "What is seen?" in user
    assert user.index("first answer") < user.index("second answer")


def test_both_orders_cancel_position_bias():
    items = _items()
    send = biased_judge(bias=2.0)
    v = judge_pairs(items, ["ok"] * 3, ["ok"] * 3, send, model="judge")
    assert len(send.seen) == 6  # two orders per question
    assert v.a == v.b == {"q1": 7.0, "q2": 7.0, "q3": 7.0}  # (6+2 + 6) / 2 each
    assert v.first_won == 6 and v.second_won == 0


def test_relative_score_hand_computed():
    items = _items()
    preds = ["good", "bad", "ok"]  # 8, 2, 6 against references at 8
    out = relative_scores(items, preds, biased_judge(bias=1.0), model="judge")
    # order-averaged: model 8.5/2.5/6.5 vs reference 8.5/8.5/8.5 (bias adds 0.5 to each side on average)
    assert out["n"] == 3 and out["n_failed"] == 0
    assert out["relative_score"] == pytest.approx(100 * (8.5 + 2.5 + 6.5) / (3 * 8.5))
    assert out["by_domain"]["mri"]["relative_score"] == pytest.approx(100 * 6.5 / 8.5)
    assert out["by_question_type"]["detailed"]["relative_score"] == pytest.approx(100 * 2.5 / 8.5)


def test_win_rate_and_failed_verdicts_are_listed():
    items = _items()
    out = win_rate(items, ["good", "ok", "bad"], ["ok", "ok", "good"], biased_judge(broken={"q3"}), model="j")
    assert (out["n"], out["wins"], out["ties"], out["losses"]) == (2, 1, 1, 0)
    assert out["win_rate"] == pytest.approx(0.75)
    assert out["n_failed"] == 2 and out["failed"][0] == "q3 (ab): no_scores_on_first_line"
    with pytest.raises(ValueError, match="3 items, 2 answers A"):
        win_rate(items, ["a", "b"], ["a", "b", "c"], biased_judge(), model="j")


def test_relative_score_as_llava_med_defines_it_is_the_mean_of_per_question_ratios():
    # references of unequal quality: 8 and 2, the model's answers 6 each (no position bias)
    items = [
        VQAItem("q1", Path("a.png"), "Q1?", "good", "OPEN"),
        VQAItem("q2", Path("b.png"), "Q2?", "bad", "OPEN"),
    ]
    out = relative_scores(items, ["ok", "ok"], biased_judge(bias=0.0), model="j", definition="mean_of_ratios")
    assert out["relative_score"] == out["mean_of_ratios"] == pytest.approx(100 * (6 / 8 + 6 / 2) / 2)
    assert out["ratio_of_sums"] == pytest.approx(100 * 12 / 10)  # vital's: 120, not 187.5
    default = relative_scores(items, ["ok", "ok"], biased_judge(bias=0.0), model="j")
    assert default["relative_score"] == default["ratio_of_sums"]


def verdict_judge(bias: str | None = None):
    """Verdicts by the quality table of the two answers; ``bias`` "first": the first shown wins every tie."""
    seen = []

    def send(requests, desc):
        out = []
        for req in requests:
            seen.append(req)
            system, user = req.body["messages"]
            parts = {p["type"]: p for p in user["content"]}
            text = parts["text"]["text"]
            first = text.split("[Assistant A]\n")[1].split("\n")[0]
            second = text.split("[Assistant B]\n")[1].split("\n")[0]
            q1, q2 = QUALITY[first], QUALITY[second]
            verdict = "A" if q1 > q2 or (q1 == q2 and bias == "first") else "B" if q2 > q1 else "C"
            response = {
                "choices": [{"message": {"content": f"[[{verdict}]]\nBecause."}, "finish_reason": "stop"}]
            }
            out.append(Outcome(req, response))
        return out

    send.seen = seen
    return send


def test_paper_win_rate_shows_image_question_ground_truth_and_reads_verdicts():
    items = _items()
    send = verdict_judge(bias="first")
    out = win_rate(
        items, ["good", "ok", "bad"], ["ok", "ok", "good"], send, model="j",
        protocol="paper", image_of=lambda item: f"data:image/png;base64,{item.question_id}",
    )  # fmt: skip
    # q1 A wins in both orders; q2 the first shown wins each order (a tie once averaged); q3 B wins
    assert (out["n"], out["wins"], out["ties"], out["losses"], out["n_failed"]) == (3, 1, 1, 1, 0)
    assert out["win_rate"] == pytest.approx(0.5)
    system, user = send.seen[0].body["messages"]
    assert "[[A]]" in system["content"] and "[[C]]" in system["content"]
    image, text = user["content"]
    assert image["image_url"]["url"] == "data:image/png;base64,q1"
    assert "[Question]\nWhat is shown?" in text["text"] and "[Ground Truth]\nref" in text["text"]
    assert parse_verdict("[[B]] because") == (0.0, 1.0) and parse_verdict("A is better") is None
    assert parse_verdict("After thought: [[C]]") == (0.5, 0.5)
