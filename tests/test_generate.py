"""Generate stage against a real local OpenAI-compatible server: prompts, validation, cache, batch, crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.llm_world import KEY, KEY_ENV, api_params, make_world
from tests.openai_server import FakeOpenAIServer
from vital import generate
from vital.io import read_json, read_jsonl
from vital.llm.cache import RequestCache
from vital.llm.client import ConfigError
from vital.llm.prompts import DemonstrationError
from vital.paths import Paths

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
        m = generate.run(api_params(server.base_url, world), Paths(world))
        cands = list(read_jsonl(world / "artifacts" / "candidates.jsonl"))
        assert len(cands) == 8 and m["candidates"] == 8 and m["candidates_failed"] == 0
        assert {c["id"] for c in cands} == {f"PMC{i:04d}_F1#{k}" for i in range(2, 6) for k in range(2)}
        assert m["skipped_by_reason"] == {"missing_image": 1, "empty_caption": 1}
        assert m["requests_sent"] == 10 and m["cache_hits"] == 0  # 8 + 2 re-asks for invalid output
        assert m["input_tokens"] > 0 and m["estimated_cost_usd"] > 0
        first = cands[0]["conversations"][0]
        assert first["from"] == "human" and "<image>" in first["value"]
        assert len(server.chat_requests()) == 10
        metrics = read_json(world / "metrics" / "generate.json")
        assert metrics["figures"] == 6 and KEY not in json.dumps(metrics)


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
        assert m["candidates"] == 6 and m["failures_by_reason"] == {"unparseable": 2}
        fails = list(read_jsonl(world / "artifacts" / "generate_failures.jsonl"))
        assert {f["id"] for f in fails} == {"PMC0002_F1#0", "PMC0002_F1#1"}
        assert m["requests_sent"] == 6 + 2 * 2


def test_request_failures_are_recorded_not_dropped(world):
    with FakeOpenAIServer() as server:
        server.fault_fn = lambda n, body: "500" if "lesion 4" in json.dumps(body) else None
        p = api_params(server.base_url, world)
        p.generate.client.max_failed_share = 0.5
        m = generate.run(p, Paths(world))
        assert m["failures_by_reason"] == {"request_server_error": 2} and m["candidates"] == 6
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


def test_dry_run_counts_and_prices_without_sending(world):
    with FakeOpenAIServer() as server:
        p = api_params(server.base_url, world)
        est = generate.dry_run(p, Paths(world))
        assert server.log == []
        assert est["requests_to_send"] == 8 and est["cached"] == 0 and est["figures_skipped"] == 1
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
