"""The lab's prompt inputs: demonstrations, prompt and rubric files, the paper structures, synthetic refusal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.llm_world import KEY, KEY_ENV, api_params, make_world
from tests.openai_server import FakeOpenAIServer
from vital import generate, judge
from vital.dag import stage_deps
from vital.io import read_jsonl
from vital.llm.prompts import DemonstrationError, PromptFileError, load_demonstrations
from vital.params import ParamsError, parse_params
from vital.paths import Paths
from vital.pipeline import STAGES
from vital.stage import run_stage

REPO = Path(__file__).resolve().parents[1]
MODALITIES = ("chest_xray", "ct_scan", "mri", "histology", "gross")


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("VITAL_PROGRESS", "off")


@pytest.fixture
def world(tmp_path):
    make_world(tmp_path)
    return tmp_path


def _demo(did: str, caption: str = "A CT of the liver with a mass.") -> dict:
    return {
        "id": did,
        "fig_caption": caption,
        "in_text_mention": [{"tokens": "The mass is shown in Figure 1."}],
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is shown?"},
            {"from": "gpt", "value": "An axial CT with a liver mass."},
        ],
    }


def _demo_world_demonstrations(world: Path) -> None:
    """The demo's own synthetic demonstrations (data/demonstrations, written by `vital world`)."""
    target = world / "data" / "demonstrations"
    shutil.rmtree(target)
    shutil.copytree(REPO / "data" / "demonstrations", target)


def _with(params, section: str, **values):
    data = params.model_dump(mode="json")
    data[section] |= values
    return parse_params(data)


# ---------------------------------------------------------------- synthetic demonstrations
@pytest.mark.skipif(not (REPO / "data" / "demonstrations").is_dir(), reason="demo data not pulled")
def test_paid_generate_refuses_the_demo_worlds_demonstrations_before_any_request(world):
    _demo_world_demonstrations(world)
    with FakeOpenAIServer() as server:
        p = api_params(server.base_url, world)
        with pytest.raises(ParamsError) as e:
            generate.run(p, Paths(world))
        assert server.log == []  # not one request, not even the batch or models endpoints
        message = str(e.value)
        assert message.startswith("generate.allow_synthetic: ") and "\n" not in message
        assert "demo_" in message and "data/demonstrations" in message
        dry = generate.dry_run(p, Paths(world))  # pricing sends nothing and says the run will refuse
        assert dry["synthetic_demonstrations"] == 20 and "generate.allow_synthetic" in dry["note"]
        # opted in: it runs, and every candidate says it came from synthetic demonstrations
        m = generate.run(_with(p, "generate", allow_synthetic=True), Paths(world))
        assert m["candidates"] == 8
    cands = list(read_jsonl(world / "artifacts" / "candidates.jsonl"))
    assert all(c["generator"]["synthetic"] is True for c in cands)


@pytest.mark.skipif(not (REPO / "data" / "demonstrations").is_dir(), reason="demo data not pulled")
def test_the_refusal_is_one_line_through_the_stage_wrapper(world, monkeypatch, capsys):
    _demo_world_demonstrations(world)
    with FakeOpenAIServer() as server:
        data = api_params(server.base_url, world).model_dump(include={"generate"}, mode="json")
        (world / "params.yaml").write_text(yaml.safe_dump(data))
        monkeypatch.chdir(world)
        with pytest.raises(SystemExit) as e:
            run_stage("generate", generate.run)
        assert server.log == []
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert err.splitlines() == [
        "[generate] error: generate.allow_synthetic: data/demonstrations holds 20 synthetic demonstrations of "
        "the demo world (demo_chest_xray_1, demo_chest_xray_2, demo_chest_xray_3 ...); put your clinicians' "
        "demonstrations there (docs/generation.md), or set generate.allow_synthetic: true to pay for requests "
        "with them"
    ]


@pytest.mark.skipif(not (REPO / "data" / "demonstrations").is_dir(), reason="demo data not pulled")
def test_paid_judge_refuses_synthetic_candidates_before_any_request(world):
    _demo_world_demonstrations(world)
    with FakeOpenAIServer() as server:
        p = _with(api_params(server.base_url, world), "generate", allow_synthetic=True)
        generate.run(p, Paths(world))
    with FakeOpenAIServer() as server:
        p = api_params(server.base_url, world)
        with pytest.raises(ParamsError, match=r"^judge\.allow_synthetic: 8 of 8 candidates") as e:
            judge.run(p, Paths(world))
        assert server.log == [] and "\n" not in str(e.value)
        m = judge.run(_with(p, "judge", allow_synthetic=True), Paths(world))
        assert m["judged"] == 8


def test_paid_judge_refuses_template_candidates(world):
    cand = {
        "id": "PMC0002_F1#0",
        "pair_id": "PMC0002_F1",
        "image": "images/ct_scan/0002.png",
        "domain": "ct_scan",
        "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "CT."}],
        "generator": {"backend": "template", "model": "template-v1"},
    }
    (world / "artifacts" / "candidates.jsonl").write_text(json.dumps(cand) + "\n")
    with FakeOpenAIServer() as server:
        with pytest.raises(ParamsError, match="judge.allow_synthetic: 1 of 1 candidates"):
            judge.run(api_params(server.base_url, world), Paths(world))
        assert server.log == []


def test_a_labs_own_demonstrations_pass(world):
    with FakeOpenAIServer() as server:
        generate.run(api_params(server.base_url, world), Paths(world))
        m = judge.run(api_params(server.base_url, world), Paths(world))
    assert m["judged"] == 8
    cands = list(read_jsonl(world / "artifacts" / "candidates.jsonl"))
    assert not any("synthetic" in c["generator"] for c in cands)


# ---------------------------------------------------------------- demonstration files
def test_demonstration_problems_name_the_file_and_line(tmp_path):
    f = tmp_path / "ct_scan.json"
    bad = _demo("ct-2")
    del bad["fig_caption"]
    f.write_text(json.dumps([_demo("ct-1"), bad], indent=2))
    lines = f.read_text().splitlines()
    line = lines.index("  {", lines.index("  {") + 1) + 1  # the second object's first line
    with pytest.raises(DemonstrationError, match=rf"ct_scan.json:{line}: needs fig_caption"):
        load_demonstrations(tmp_path)
    f.write_text('[\n  {"id": "x",\n   "fig_caption": oops}\n]')
    with pytest.raises(DemonstrationError, match=r"ct_scan.json:3: not valid JSON"):
        load_demonstrations(tmp_path)
    swapped = _demo("ct-3")
    swapped["conversations"].reverse()
    f.write_text(json.dumps([swapped]))
    with pytest.raises(DemonstrationError, match=r"ct_scan.json:1: conversations\[0\] must be a human turn"):
        load_demonstrations(tmp_path)
    f.write_text(json.dumps([_demo("ct-1")]))
    (tmp_path / "mri.json").write_text(json.dumps([_demo("ct-1")]))
    with pytest.raises(
        DemonstrationError, match=r"mri.json:1: id 'ct-1' is used again \(first in .*ct_scan.json:1\)"
    ):
        load_demonstrations(tmp_path)
    (tmp_path / "mri.json").write_text("[]")
    with pytest.raises(DemonstrationError, match="mri.json:1: holds no demonstrations"):
        load_demonstrations(tmp_path)


@pytest.mark.skipif(not (REPO / "data" / "demonstrations").is_dir(), reason="demo data not pulled")
def test_the_demo_data_reads_as_it_is():
    demos = load_demonstrations(REPO / "data" / "demonstrations")
    assert sorted(demos) == sorted(MODALITIES) and sum(map(len, demos.values())) == 20


# ---------------------------------------------------------------- prompt and rubric files
def test_prompt_and_rubric_files_are_sent_and_are_deps(world):
    (world / "lab").mkdir()
    (world / "lab" / "generation.txt").write_text("Our lab's instructions. Ask $rounds.\nReply in JSON.\n")
    (world / "lab" / "rubric.txt").write_text("Our lab's rubric: score 0-10. Reply with JSON.\n")
    bodies = []

    def reply(body):
        bodies.append(body)
        return '{"score": 6, "rationale": "ok"}' if "rubric" in json.dumps(body) else _conversation()

    with FakeOpenAIServer(content_fn=reply) as server:
        p = api_params(server.base_url, world)
        p = _with(p, "generate", prompt_file=str(world / "lab" / "generation.txt"))
        p = _with(p, "judge", rubric_file=str(world / "lab" / "rubric.txt"))
        generate.run(p, Paths(world))
        judge.run(p, Paths(world))
    system = [b["messages"][0]["content"] for b in bodies]
    assert system[0] == "Our lab's instructions. Ask Between 1 and 3 question-answer rounds.\nReply in JSON."
    assert system[-1] == "Our lab's rubric: score 0-10. Reply with JSON."
    assert "lab/generation.txt" in stage_deps(STAGES["generate"], p, world).data
    assert "lab/rubric.txt" in stage_deps(STAGES["judge"], p, world).data
    defaults = api_params("http://127.0.0.1:9", world)
    assert "vital/llm/defaults/generation_vital.txt" in stage_deps(STAGES["generate"], defaults, REPO).data
    paper = _with(
        _with(defaults, "judge", structure="paper", structured=False), "generate", structure="paper"
    )
    assert "vital/llm/defaults/judge_paper.txt" in stage_deps(STAGES["judge"], paper, REPO).data
    assert "vital/llm/defaults/generation_paper.txt" in stage_deps(STAGES["generate"], paper, REPO).data
    offline = parse_params({})  # the demo's template generator and heuristic judge send no prompt
    assert not any(
        "defaults/" in d for s in ("generate", "judge") for d in stage_deps(STAGES[s], offline, REPO).data
    )


def test_a_missing_prompt_file_stops_naming_the_param(world):
    with FakeOpenAIServer() as server:
        p = _with(api_params(server.base_url, world), "generate", prompt_file="lab/nowhere.txt")
        with pytest.raises(PromptFileError, match=r"^generate\.prompt_file: lab/nowhere.txt: not found$"):
            generate.run(p, Paths(world))
        (world / "empty.txt").write_text("\n")
        p = _with(api_params(server.base_url, world), "judge", rubric_file=str(world / "empty.txt"))
        with pytest.raises(PromptFileError, match=r"^judge\.rubric_file: .*empty.txt: empty$"):
            judge.run(p, Paths(world))
        assert server.chat_requests() == []


def _conversation(rounds: int = 2) -> str:
    turns = []
    for i in range(rounds):
        turns += [{"from": "human", "value": f"Question {i}?"}, {"from": "gpt", "value": f"Answer {i}."}]
    return json.dumps({"conversations": turns})


# ---------------------------------------------------------------- the paper structures
def test_paper_generation_sends_one_demonstration_per_modality(world):
    demos = world / "data" / "demonstrations"
    for m in MODALITIES:
        (demos / f"{m}.json").write_text(
            json.dumps([_demo(f"{m}-{k}", f"A {m} figure {k}.") for k in range(3)])
        )
    bodies = []
    with FakeOpenAIServer(content_fn=lambda b: (bodies.append(b), _conversation(4))[1]) as server:
        p = _with(api_params(server.base_url, world), "generate", structure="paper", demos_per_prompt=5)
        generate.run(p, Paths(world))
    msgs = bodies[0]["messages"]
    assert "at least 4-5 question-answer exchanges" in msgs[0]["content"]
    assert "specialised terminology" in msgs[0]["content"]
    assert [m["role"] for m in msgs[1:11]] == ["user", "assistant"] * 5 and msgs[11]["role"] == "user"
    shown = [msgs[1 + 2 * k]["content"] for k in range(5)]
    assert sorted(s.split("\n")[1].split(" figure")[0].removeprefix("A ") for s in shown) == sorted(
        MODALITIES
    )
    assert msgs[2]["content"].startswith("User: What is shown?\n\nAssistant: An axial CT")
    image, text = msgs[-1]["content"]  # the image first, as the reference sends it
    assert image["type"] == "image_url" and text["text"].startswith("Figure caption")
    cands = list(read_jsonl(world / "artifacts" / "candidates.jsonl"))
    assert all(len({d.split("-")[0] for d in c["generator"]["demos"]}) == 5 for c in cands)


def test_paper_judge_scores_each_question_answer_pair(world):
    with FakeOpenAIServer(content_fn=lambda b: _conversation(3)) as server:
        generate.run(api_params(server.base_url, world), Paths(world))
    bodies = []

    def reply(body):
        bodies.append(body)
        text = body["messages"][1]["content"][1]["text"]
        return {"Question 0?": "4\nvague", "Question 1?": "**8**\ngood", "Question 2?": "9/10\nclear"}[
            text.split("Question:\n\t- ")[1].split("\n")[0]
        ]

    with FakeOpenAIServer(content_fn=reply) as server:
        p = _with(api_params(server.base_url, world), "judge", structure="paper", structured=False)
        assert judge.dry_run(p, Paths(world))["requests_to_send"] == 8 * 3  # priced per pair too
        m = judge.run(p, Paths(world))
    assert m["judged"] == 8 and m["requests_sent"] == 8 * 3  # one request per question-answer pair
    body = bodies[0]
    assert "response_format" not in body
    image, text = body["messages"][1]["content"]
    text = text["text"]
    assert image["image_url"]["url"].startswith("data:image/png")
    assert "Figure caption:\n\t- Axial CT showing lesion" in text
    assert "Figure context:\n\t- Figure" in text and "Answer:\n\t- Answer" in text
    assert "Scope and relevance" in text and "first line" in text
    js = list(read_jsonl(world / "artifacts" / "judgments.jsonl"))
    assert js[0]["score"] == pytest.approx(7.0) and js[0]["judge"]["pair_scores"] == [4, 8, 9]
    assert len(js[0]["judge"]["requests"]) == 3 and js[0]["judge"]["aggregate"] == "mean"
    with pytest.raises(ParamsError, match="judge.structured"):  # the paper reply is not JSON
        _with(p, "judge", structured=True)


def test_paper_judge_leaves_a_candidate_unjudged_when_one_pair_fails(world):
    with FakeOpenAIServer(content_fn=lambda b: _conversation(2)) as server:
        generate.run(api_params(server.base_url, world), Paths(world))

    def reply(body):
        text = body["messages"][1]["content"][1]["text"]
        return "no idea" if "lesion 3" in text and "Question 1?" in text else "6\nfine"

    with FakeOpenAIServer(content_fn=reply) as server:
        p = _with(api_params(server.base_url, world), "judge", structure="paper", structured=False)
        p.judge.client.max_failed_share = 0.5
        m = judge.run(p, Paths(world))
    assert m["judged"] == 6 and m["failed"] == 2
    assert {u["where"] for u in m["failed_examples"]} == {"PMC0003_F1#0", "PMC0003_F1#1"}
    assert all(u["detail"].startswith("QA pair 2: unparseable_score") for u in m["failed_examples"])


def test_the_shipped_vital_texts_are_the_ones_earlier_runs_sent():
    """sha256 of the vital structure's texts as they were when they were constants in vital/llm/prompts.py:
    unchanged, the requests (and so the response-cache keys) of earlier paid runs are unchanged. Editing a
    default makes every request new; update the digests only when that is meant."""
    from hashlib import sha256

    from vital.llm.prompts import generation_system, read_prompt

    generation = generation_system(read_prompt(None, "generation", "vital", "generate.prompt_file"), 1, 3)
    rubric = read_prompt(None, "judge", "vital", "judge.rubric_file")
    assert sha256(generation.encode()).hexdigest().startswith("0ddb11db6a2a6793")
    assert sha256(rubric.encode()).hexdigest().startswith("5e0d551769a518db")
