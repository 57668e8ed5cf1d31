"""Generate stage against a real local OpenAI-compatible server: prompts, validation, cache, batch, crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
import yaml

from tests.llm_world import KEY, KEY_ENV, api_params, make_world
from tests.openai_server import FakeOpenAIServer
from vital import generate, stats
from vital.failures import StageFailed
from vital.io import read_json, read_jsonl
from vital.llm.cache import RequestCache
from vital.llm.client import ConfigError
from vital.llm.prompts import DemonstrationError
from vital.paths import Paths
from vital.pipeline import STAGES
from vital.stage import call, run_stage

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("VITAL_PROGRESS", "off")


@pytest.fixture
def world(tmp_path):
    make_world(tmp_path)
    return tmp_path


def test_generates_validates_and_counts_skips(world):
    with FakeOpenAIServer() as server:
        server.script.extend(["bad_content", "length"])
        m = call(STAGES["generate"], api_params(server.base_url, world), Paths(world))
        cands = list(read_jsonl(world / "artifacts" / "candidates.jsonl"))
        assert len(cands) == 8 and m["candidates"] == 8 and m["failed"] == 0
        assert {c["id"] for c in cands} == {f"PMC{i:04d}_F1#{k}" for i in range(2, 6) for k in range(2)}
        assert m["dropped_by_reason"] == {"empty_caption": 1, "missing_image": 1}
        assert m["requests_sent"] == 10 and m["cache_hits"] == 0  # 8 + 2 re-asks for invalid output
        assert m["input_tokens"] > 0 and m["estimated_cost_usd"] > 0
        first = cands[0]["conversations"][0]
        assert first["from"] == "human" and "<image>" in first["value"]
        assert len(server.chat_requests()) == 10
        evidence = stats.read(world, "generate")  # what run_stage wrote: the record, no API key
        assert evidence["detail"]["figures"] == 6 and KEY not in json.dumps(evidence)


def test_prompt_content_and_reproducibility(world):
    bodies = []
    with FakeOpenAIServer(content_fn=lambda b: (bodies.append(b), _valid())[1]) as server:
        generate.run(api_params(server.base_url, world), Paths(world))
    msgs = bodies[0]["messages"]
    assert msgs[0]["role"] == "system" and "JSON" in msgs[0]["content"]
    assert "Between 1 and 3 question-answer rounds" in msgs[0]["content"]  # generate.min_rounds/max_rounds
    assert [m["role"] for m in msgs[1:5]] == ["user", "assistant", "user", "assistant"]  # 2 demonstrations
    parts = msgs[-1]["content"]
    assert parts[0]["text"].startswith("Figure caption: Axial CT") and "Figure context" in parts[0]["text"]
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    seeds = {b["seed"] for b in bodies}
    assert len(seeds) == len(bodies)  # each candidate is its own sample


def _valid() -> str:
    return json.dumps(
        {"conversations": [{"from": "human", "value": "What modality?"}, {"from": "gpt", "value": "CT."}]}
    )


def test_rerun_sends_nothing_and_one_changed_figure_resends_only_it(world):
    with FakeOpenAIServer() as server:
        p = api_params(server.base_url, world)
        generate.run(p, Paths(world))
        before = (world / "artifacts" / "candidates.jsonl").read_text()
        m = generate.run(p, Paths(world))
        assert m["requests_sent"] == 0 and m["cache_hits"] == 8
        assert (world / "artifacts" / "candidates.jsonl").read_text() == before
        sample = world / "artifacts" / "sample.jsonl"
        recs = list(read_jsonl(sample))
        recs[3]["fig_caption"] = "Axial CT, revised caption."
        sample.write_text("".join(json.dumps(r) + "\n" for r in recs))
        m = generate.run(p, Paths(world))
        assert m["requests_sent"] == 2 and m["cache_hits"] == 6
        completed = server.completed_keys()
        assert len(completed) == len(set(completed)) == 10


def test_persistently_invalid_output_is_listed_with_reason(world):
    with FakeOpenAIServer() as server:
        server.fault_fn = lambda n, body: "bad_content" if "lesion 2" in json.dumps(body) else None
        p = api_params(server.base_url, world)
        p.generate.client.max_failed_share = 0.5  # 2 of 8 fail; the default would fail the stage
        m = generate.run(p, Paths(world))
        assert m["candidates"] == 6 and m["failed_by_reason"] == {"unparseable": 2}
        fails = list(read_jsonl(world / "artifacts" / "generate_failures.jsonl"))
        assert {f["id"] for f in fails} == {"PMC0002_F1#0", "PMC0002_F1#1"}
        assert m["requests_sent"] == 6 + 2 * 2


def test_request_failures_are_recorded_not_dropped(world):
    with FakeOpenAIServer() as server:
        server.fault_fn = lambda n, body: "500" if "lesion 4" in json.dumps(body) else None
        p = api_params(server.base_url, world)
        p.generate.client.max_failed_share = 0.5
        m = generate.run(p, Paths(world))
        assert m["failed_by_reason"] == {"request_server_error": 2} and m["candidates"] == 6
        assert m["request_failures"] == {"server_error": 2} and m["retries"]["server_error"] == 6


def test_config_errors_fail_before_any_request(world, monkeypatch):
    with FakeOpenAIServer() as server:
        p = api_params(server.base_url, world)
        monkeypatch.delenv(KEY_ENV)
        with pytest.raises(ConfigError, match=KEY_ENV):
            generate.run(p, Paths(world))
        monkeypatch.setenv(KEY_ENV, KEY)
        (world / "data" / "demonstrations" / "ct_scan.json").write_text("{not json")
        with pytest.raises(DemonstrationError, match="ct_scan.json"):
            generate.run(p, Paths(world))
        assert server.chat_requests() == []
    dead = api_params(server.base_url, world)  # the server is stopped now
    make_world(world)
    with pytest.raises(ConfigError, match="base_url: cannot reach"):
        generate.run(dead, Paths(world))


def test_failed_share_and_429_wait_are_checked_with_the_params(world):
    from vital.params import ParamsError, parse_params

    with pytest.raises(ParamsError, match=r"generate\.client\.max_failed_share"):
        parse_params({"generate": {"client": {"max_failed_share": 1.5}}})
    with pytest.raises(ParamsError, match=r"judge\.client\.rate_limit_wait_s"):
        parse_params({"judge": {"client": {"rate_limit_wait_s": 0}}})


def test_dry_run_counts_and_prices_without_sending(world):
    with FakeOpenAIServer() as server:
        p = api_params(server.base_url, world)
        est = generate.dry_run(p, Paths(world))
        assert server.log == []
        assert est["requests_to_send"] == 8 and est["cached"] == 0
        # the empty caption, and the missing image found while the requests were built (once missed)
        assert est["dropped_by_reason"] == {"empty_caption": 1, "missing_image": 1}
        assert est["estimated_input_tokens"] > 8 * 85 and est["estimated_output_tokens_max"] == 8 * 1024
        assert est["estimated_cost_usd_max"] == pytest.approx(
            est["estimated_input_tokens"] * 2.5e-6 + est["estimated_output_tokens_max"] * 1e-5, abs=1e-4
        )
        generate.run(p, Paths(world))
        est = generate.dry_run(p, Paths(world))
        assert est["requests_to_send"] == 0 and est["cached"] == 8


def test_batch_mode_merges_resubmits_failed_lines_and_resumes(world):
    with FakeOpenAIServer(batch_polls=2) as server:
        server.batch_fail_first_n = 3
        p = api_params(server.base_url, world, mode="batch", batch_poll_s=0.02, batch_max_lines=5)
        m = generate.run(p, Paths(world))
        assert m["candidates"] == 8 and m["cache_hits"] == 0
        creates = [e for e in server.log if e["path"] == "batch_create"]
        assert len(creates) == 3  # 8 lines split 5 + 3, then the 3 failed lines resubmitted once
        assert server.chat_requests() == []
        manifest = read_json(world / ".vital" / "cache" / "batches" / "generate.json")
        assert all(b["merged"] and b["status"] == "completed" for b in manifest["batches"])
        m2 = generate.run(p, Paths(world))
        assert m2["cache_hits"] == 8 and len([e for e in server.log if e["path"] == "batch_create"]) == 3


def _write_params(root: Path, base_url: str) -> None:
    p = api_params(base_url, root)
    data = p.model_dump(include={"generate"}, mode="json")
    data["generate"]["client"]["concurrency"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(data))


def test_kill_9_mid_run_then_rerun_repeats_no_completed_request(tmp_path):
    make_world(tmp_path, n=25, bad=False)
    with FakeOpenAIServer(latency=0.05) as server:
        _write_params(tmp_path, server.base_url)
        env = {**os.environ, KEY_ENV: KEY, "VITAL_PROGRESS": "off", "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, str(REPO / "stages" / "generate.py")]
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while len(server.completed_keys()) < 12 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        first = server.completed_keys()
        assert 12 <= len(first) < 50, "the kill should land mid-run"
        cached = RequestCache(tmp_path / ".vital" / "cache").keys()
        assert len(cached) >= len(first) - 2  # at most the requests in flight are lost
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        second = server.completed_keys()[len(first) :]
        assert not set(second) & cached  # nothing the cache holds was paid for again
        assert len(second) + len(cached) == 50
        assert len(server.completed_keys()) - len(set(server.completed_keys())) <= 2  # concurrency
        assert len(list(read_jsonl(tmp_path / "artifacts" / "candidates.jsonl"))) == 50


# ---------------------------------------------------------------- a run that (almost) failed is a failure
def test_every_request_refused_fails_the_stage_after_writing_metrics(world):
    with FakeOpenAIServer() as server:
        server.fault_fn = lambda n, body: "503"  # a refusal that is not the same for every request
        p = api_params(server.base_url, world)
        p.generate.client.max_failed_share = 1.0  # nothing succeeded: fails whatever the share allows
        p.generate.client.max_retries = 0
        with pytest.raises(
            StageFailed, match=r"^generate: all 8 candidates failed \(request_server_error 8\)"
        ) as e:
            call(STAGES["generate"], p, Paths(world))
    assert "\n" not in str(e.value)
    assert (world / "artifacts" / "candidates.jsonl").read_text() == ""
    evidence = stats.read(world, "generate")  # a failed stage keeps what it paid for, in its evidence
    assert evidence["failed"] == 8 and evidence["failed_by_reason"] == {"request_server_error": 8}
    m = evidence["detail"]
    assert m["request_failures"] == {"server_error": 8} and m["figures_without_candidates"] == 4


def test_failed_share_over_the_limit_fails_and_the_rerun_pays_only_for_the_failed(world):
    with FakeOpenAIServer() as server:
        server.fault_fn = lambda n, body: "500" if "lesion 4" in json.dumps(body) else None
        p = api_params(server.base_url, world)
        p.generate.client.max_retries = 0
        with pytest.raises(
            StageFailed,
            match=r"2 of 8 candidates failed \(25\.0% > generate\.client\.max_failed_share 0\.05\)",
        ):
            generate.run(p, Paths(world))
        assert len(list(read_jsonl(world / "artifacts" / "candidates.jsonl"))) == 6  # what succeeded
        server.fault_fn = None  # the cause is fixed
        m = generate.run(p, Paths(world))
        assert m["candidates"] == 8 and m["requests_sent"] == 2 and m["cache_hits"] == 6
        assert len(server.completed_keys()) == len(set(server.completed_keys())) == 8  # nothing paid twice


def _stage_params(root: Path, base_url: str, **generate) -> None:
    data = api_params(base_url, root, **generate).model_dump(include={"generate"}, mode="json")
    (root / "params.yaml").write_text(yaml.safe_dump(data))


def _run_stage(root: Path, monkeypatch, capsys, fn) -> tuple[int, list[str]]:
    monkeypatch.chdir(root)
    with pytest.raises(SystemExit) as e:
        run_stage("generate", fn)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return e.value.code, [line for line in err.splitlines() if "error:" in line]


def test_stage_wrapper_exits_nonzero_with_one_line(world, monkeypatch, capsys):
    with FakeOpenAIServer() as server:
        server.fault_fn = lambda n, body: "405"
        _stage_params(world, server.base_url)
        code, lines = _run_stage(world, monkeypatch, capsys, generate.run)
        assert code == 2 and len(lines) == 1
        # the same refusal for every request stops the run early, naming the setting to fix
        assert lines[0].startswith("[generate] error: generate: ") and "generate.client.base_url" in lines[0]
        assert "HTTP 405" in lines[0] and len(server.chat_requests()) <= 5 + 16

        def raw_api_call(params, paths):  # an SDK error that reaches the wrapper unhandled
            client = openai.OpenAI(api_key=KEY, base_url=server.base_url, max_retries=0)
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])

        server.fault_fn = lambda n, body: "418"
        code, lines = _run_stage(world, monkeypatch, capsys, raw_api_call)
        assert code == 2 and lines == ["[generate] error: APIStatusError: Error code: 418 - refused (418)"]

    def unwritable(params, paths):
        raise PermissionError(13, "Permission denied", "artifacts/candidates.jsonl")

    code, lines = _run_stage(world, monkeypatch, capsys, unwritable)
    assert code == 2 and lines == [
        "[generate] error: [Errno 13] Permission denied: 'artifacts/candidates.jsonl'"
    ]


# ---------------------------------------------------------------- 429s below client.rpm lose nothing
def test_a_server_limit_below_client_rpm_loses_no_candidate(world):
    with FakeOpenAIServer(rpm=180) as server:  # 3 requests/s, said nowhere in headers
        server.advertise_limits = False
        server.retry_after_s = "0.1"
        p = api_params(server.base_url, world)
        p.generate.client.max_retries = 0
        m = generate.run(p, Paths(world))
    assert [e["status"] for e in server.chat_requests()].count(429) > 0
    assert m["candidates"] == 8 and m["failed"] == 0 and m["figures_without_candidates"] == 0
    assert m["retries"]["rate_limited"] > 0 and m["rate_limiter"]["lowered_on_429"] >= 1
    assert m["rate_limiter"]["rpm_lowest"] < 60_000


def test_figures_left_without_candidates_are_counted_and_printed(world, capsys):
    with FakeOpenAIServer() as server:
        server.fault_fn = lambda n, body: "500" if "lesion 4" in json.dumps(body) else None
        p = api_params(server.base_url, world)
        p.generate.client.max_retries = 0
        p.generate.client.max_failed_share = 0.5
        m = generate.run(p, Paths(world))
    assert m["figures_without_candidates"] == 1 and m["figures_without_candidates_list"] == ["PMC0004_F1"]
    err = capsys.readouterr().err.splitlines()
    assert "[generate] 1 figure got no candidate: PMC0004_F1" in err
    # the one-line summary: written, failed by reason, sent, cached, cost
    summary = [line for line in err if line.startswith("[generate] 6 candidates written")]
    assert len(summary) == 1
    assert summary[0].startswith(
        "[generate] 6 candidates written, 2 failed (request_server_error 2); 8 requests sent, 0 cached; cost $0.0"
    )


# ---------------------------------------------------------------- prices: exact or dated snapshot only
def test_unknown_model_has_no_price_and_says_so(world, capsys):
    with FakeOpenAIServer() as server:
        p = api_params(server.base_url, world, model="gpt-4o-mini")
        p.generate.prices = {"gpt-4o": p.generate.prices["test-model"]}
        est = generate.dry_run(p, Paths(world))
        assert est["estimated_cost_usd_max"] is None and est["price_known"] is False
        assert "no price for model 'gpt-4o-mini' in generate.prices (priced: gpt-4o)" in est["note"]
        m = generate.run(p, Paths(world))
        assert m["estimated_cost_usd"] is None and m["price_known"] is False and m["input_tokens"] > 0
        assert "gpt-4o-mini" in m["price_note"]
        err = capsys.readouterr().err
        assert "[generate] warning: no price for model 'gpt-4o-mini'" in err
        assert "cost unknown (no price for 'gpt-4o-mini')" in err
        p.generate.model = "gpt-4o-2024-08-06"  # a dated snapshot is priced as its model
        assert generate.dry_run(p, Paths(world))["price"] == {"input_per_1m": 2.5, "output_per_1m": 10.0}


# ---------------------------------------------------------------- refusals that name the fix
def test_401_and_404_name_the_setting(world):
    with FakeOpenAIServer() as server:
        server.fault_fn = lambda n, body: "401"
        p = api_params(server.base_url, world)
        with pytest.raises(
            ConfigError, match=rf"check that generate\.client\.api_key_env \({KEY_ENV}\)"
        ) as e:
            generate.run(p, Paths(world))
        assert KEY not in str(e.value)
        server.fault_fn = lambda n, body: "404"
        with pytest.raises(ConfigError, match=r"does not serve model 'test-model'; check generate\.model"):
            generate.run(p, Paths(world))
        assert len(server.chat_requests()) <= 2 * 4  # each stops at once, not after 8 refusals


def test_batch_mode_on_a_server_without_the_batch_api_suggests_online(world, monkeypatch, capsys):
    with FakeOpenAIServer() as server:
        server.batch_api = False
        _stage_params(world, server.base_url, mode="batch", batch_poll_s=0.02)
        code, lines = _run_stage(world, monkeypatch, capsys, generate.run)
    assert code == 2 and len(lines) == 1
    assert (
        "has no Batch API (" in lines[0]
        and "/files answered HTTP 405); set generate.mode: online" in lines[0]
    )
