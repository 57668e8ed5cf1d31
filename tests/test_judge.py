"""Judge stage: the same engine, structured output, tolerant score parsing, offline heuristic backend."""

from __future__ import annotations

import json

import pytest

from tests.llm_world import KEY, KEY_ENV, api_params, make_world
from tests.openai_server import FakeOpenAIServer
from vital import generate, judge, stats
from vital.failures import StageFailed
from vital.io import read_jsonl
from vital.llm.client import ConfigError
from vital.llm.parse import InvalidOutput, parse_score
from vital.paths import Paths
from vital.pipeline import STAGES
from vital.stage import call


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("VITAL_PROGRESS", "off")


@pytest.fixture
def judged_world(tmp_path):
    make_world(tmp_path)
    with FakeOpenAIServer() as server:
        generate.run(api_params(server.base_url, tmp_path), Paths(tmp_path))
    return tmp_path


def test_judges_every_candidate_with_structured_output(judged_world):
    bodies = []

    def reply(body):
        bodies.append(body)
        return json.dumps({"score": 8, "rationale": "specific and correct"})

    with FakeOpenAIServer(content_fn=reply) as server:
        m = judge.run(api_params(server.base_url, judged_world), Paths(judged_world))
    js = list(read_jsonl(judged_world / "artifacts" / "judgments.jsonl"))
    assert len(js) == 8 and m["judged"] == 8 and m["failed"] == 0 and m["score_mean"] == 8
    assert js[0]["score"] == 8 and js[0]["judge"]["backend"] == "openai" and js[0]["judge"]["request"]
    assert bodies[0]["response_format"]["type"] == "json_schema"
    system = bodies[0]["messages"][0]["content"]
    assert "rubric" in system and "0 (unusable) to 10" in system
    assert bodies[0]["messages"][1]["content"][1]["image_url"]["url"].startswith("data:image/png")
    assert m["requests_sent"] == 8 and m["estimated_cost_usd"] > 0


def test_unparseable_scores_are_reasked_then_listed(judged_world):
    def reply(body):
        text = json.dumps(body["messages"])
        if "PMC0003" in text or "lesion 3" in text:
            return "I would rather not say."
        if "lesion 4" in text:
            return "Score: 6/10 - mostly fine"
        return json.dumps({"score": 9, "rationale": "ok"})

    with FakeOpenAIServer(content_fn=reply) as server:
        p = api_params(server.base_url, judged_world)
        p.judge.client.max_failed_share = 0.5  # 2 of 8 fail; the default would fail the stage
        m = judge.run(p, Paths(judged_world))
    assert m["judged"] == 6 and m["failed_by_reason"] == {"unparseable_score": 2}
    assert m["invalid_output_reasks"] == {"unparseable_score": 2}  # each re-asked once (max_invalid_retries)
    assert {f["where"] for f in m["failed_examples"]} == {"PMC0003_F1#0", "PMC0003_F1#1"}
    scores = {
        j["candidate_id"]: j["score"] for j in read_jsonl(judged_world / "artifacts" / "judgments.jsonl")
    }
    assert scores["PMC0004_F1#0"] == 6
    assert m["requests_sent"] == 8 + 2


def test_judge_rerun_is_free_and_dry_run_sends_nothing(judged_world):
    with FakeOpenAIServer() as server:
        p = api_params(server.base_url, judged_world)
        est = judge.dry_run(p, Paths(judged_world))
        assert est["requests_to_send"] == 8 and server.log == []
        judge.run(p, Paths(judged_world))
        m = judge.run(p, Paths(judged_world))
        assert m["requests_sent"] == 0 and m["cache_hits"] == 8
        assert judge.dry_run(p, Paths(judged_world))["cached"] == 8


def test_judge_batch_mode(judged_world):
    with FakeOpenAIServer() as server:
        p = api_params(server.base_url, judged_world)
        p.judge.mode = "batch"
        m = judge.run(p, Paths(judged_world))
        assert m["judged"] == 8 and server.chat_requests() == []
        assert [e["path"] for e in server.log].count("batch_create") == 1


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ('{"score": 7, "rationale": "x"}', 7),
        ('```json\n{"score": 3.5}\n```', 3.5),
        ("Score: 8/10. Good.", 8),
        ("Rating = 4", 4),
        ("I give it 9/10", 9),
        ("6", 6),
        ("7\nAccurate, but the answer misses the lesion size.", 7),  # a leading score line
        ("**8**/10\n\nSpecific and correct.", 8),
    ],
)
def test_parse_score_is_tolerant(text, score):
    assert parse_score(text)[0] == score


@pytest.mark.parametrize(
    "text",
    [
        "no number here",
        '{"score": 14}',
        "Score: 11/10",
        '{"score": "high"}',
        "1. Accuracy: fine\n2. Relevance: ok",
    ],
)
def test_parse_score_rejects(text):
    with pytest.raises(InvalidOutput):
        parse_score(text)


def test_heuristic_backend_runs_offline(tmp_path):
    pytest.importorskip("vital.demo.heuristic_judge")
    recs = make_world(tmp_path, n=3, bad=False)
    cands = [
        {
            "id": f"{r['pair_id']}#0",
            "pair_id": r["pair_id"],
            "image": r["image"],
            "domain": "ct_scan",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is shown?"},
                {"from": "gpt", "value": "An axial CT image with a lesion."},
            ],
        }
        for r in recs
    ]
    cands[1] = {**cands[1], "conversations": "not a list"}  # a malformed candidate, and a half-written line
    lines = [json.dumps(c) + "\n" for c in cands] + ['{"id": "PMC9#0", "pair_id"\n']
    (tmp_path / "artifacts" / "candidates.jsonl").write_text("".join(lines))
    from vital.params import parse_params

    m = judge.run(parse_params({}), Paths(tmp_path))  # skips and counts them: no pydantic traceback
    assert m["judged"] == 2 and m["requests_sent"] == 0
    assert m["dropped"] == 2 and m["dropped_by_reason"] == {"bad_line": 2}
    where = [e["where"] for e in m["dropped_examples"]]
    assert where == [f"{tmp_path / 'artifacts' / 'candidates.jsonl'}:{n}" for n in (2, 4)]
    js = list(read_jsonl(tmp_path / "artifacts" / "judgments.jsonl"))
    assert all(0 <= j["score"] <= 10 for j in js) and js[0]["judge"]["backend"] == "heuristic"


def test_a_leading_score_line_is_a_score_and_the_rest_its_rationale(judged_world, capsys):
    with FakeOpenAIServer(content_fn=lambda body: "7\nAccurate; misses the size.") as server:
        p = api_params(server.base_url, judged_world)
        p.judge.structured = False
        m = judge.run(p, Paths(judged_world))
    assert m["judged"] == 8 and m["invalid_output_reasks"] == {} and m["requests_sent"] == 8
    js = list(read_jsonl(judged_world / "artifacts" / "judgments.jsonl"))
    assert {(j["score"], j["rationale"]) for j in js} == {(7, "Accurate; misses the size.")}
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("[judge] ")][0].startswith(
        "[judge] 8 judgments written, 0 failed; 8 requests sent, 0 cached; cost $0.0"
    )


def test_every_reply_unparseable_fails_the_judge_stage(judged_world, capsys):
    with FakeOpenAIServer(content_fn=lambda body: "I would rather not say.") as server:
        p = api_params(server.base_url, judged_world)
        p.judge.client.max_failed_share = 1.0  # nothing succeeded: fails whatever the share allows
        with pytest.raises(StageFailed, match=r"^judge: all 8 candidates failed \(unparseable_score 8\)"):
            call(STAGES["judge"], p, Paths(judged_world))
    assert (judged_world / "artifacts" / "judgments.jsonl").read_text() == ""
    evidence = stats.read(judged_world, "judge")
    assert evidence["failed"] == 8 and evidence["detail"]["invalid_output_reasks"] == {"unparseable_score": 8}
    assert (
        "[judge] 0 judgments written, 8 failed (unparseable_score 8); 16 requests sent, 0 cached, 8 re-asked"
        in (capsys.readouterr().err)
    )


def test_judge_failed_share_default_and_401_naming_the_judge_key(judged_world):
    def reply(body):
        return (
            "no idea"
            if "lesion 3" in json.dumps(body["messages"])
            else json.dumps({"score": 5, "rationale": ""})
        )

    with FakeOpenAIServer(content_fn=reply) as server:
        p = api_params(server.base_url, judged_world)
        with pytest.raises(
            StageFailed, match=r"2 of 8 candidates failed \(25\.0% > judge\.client\.max_failed_share 0\.02\)"
        ):
            judge.run(p, Paths(judged_world))
        assert len(list(read_jsonl(judged_world / "artifacts" / "judgments.jsonl"))) == 6
        server.fault_fn = lambda n, body: "401"
        p.judge.seed = 1  # new requests (the cache holds the first ones)
        with pytest.raises(ConfigError, match=rf"judge\.client\.api_key_env \({KEY_ENV}\)") as e:
            judge.run(p, Paths(judged_world))
        assert KEY not in str(e.value)
