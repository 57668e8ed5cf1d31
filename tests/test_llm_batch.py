"""Batch runner: splitting, manifest, resume after a kill, merge by custom_id, resubmission."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.openai_server import FakeOpenAIServer
from vital.io import read_json
from vital.llm.batch import BatchLimits, BatchRunner, split_lines
from vital.llm.cache import RequestCache
from vital.llm.engine import Request


def _reqs(n: int) -> list[Request]:
    return [
        Request({"model": "m", "messages": [{"role": "user", "content": f"q{i}"}], "seed": i})
        for i in range(n)
    ]


def _runner(server, tmp_path, **limits) -> BatchRunner:
    client = openai.AsyncOpenAI(api_key="k", base_url=server.base_url, max_retries=0, timeout=5)
    return BatchRunner(
        client,
        RequestCache(tmp_path / "cache"),
        tmp_path / "cache" / "batches" / "t.json",
        BatchLimits(poll_s=0.02, **limits),
    )


def _creates(server) -> int:
    return [e["path"] for e in server.log].count("batch_create")


def test_split_respects_line_and_byte_limits():
    lines = ["x" * 9] * 7  # 10 bytes each with the newline
    assert [len(c) for c in split_lines(lines, 3, 1000)] == [3, 3, 1]
    assert [len(c) for c in split_lines(lines, 100, 25)] == [2, 2, 2, 1]
    with pytest.raises(ValueError, match="over the 5-byte"):
        split_lines(lines, 10, 5)


def test_results_merge_by_custom_id_into_the_cache(tmp_path):
    with FakeOpenAIServer(batch_polls=3) as server:
        reqs = _reqs(7)
        out = _runner(server, tmp_path, max_lines=4).run(reqs)
        assert all(o.ok for o in out) and _creates(server) == 2
        # the server returns lines in reverse order; each outcome still carries its own request's answer
        for o in out:
            assert o.response["id"] == f"chatcmpl-{o.request.key[:12]}"


def test_killed_after_submit_resumes_polling_instead_of_paying_again(tmp_path):
    with FakeOpenAIServer(batch_polls=2) as server:
        reqs = _reqs(5)
        first = _runner(server, tmp_path)

        async def submit_then_die():
            await first._submit(reqs)

        asyncio.run(submit_then_die())  # the stage is killed here: batch created, never polled
        manifest = read_json(tmp_path / "cache" / "batches" / "t.json")
        assert len(manifest["batches"]) == 1 and manifest["batches"][0]["id"]
        out = _runner(server, tmp_path).run(reqs)
        assert all(o.ok for o in out) and _creates(server) == 1


def test_only_failed_and_expired_lines_are_resubmitted(tmp_path):
    with FakeOpenAIServer() as server:
        reqs = _reqs(6)
        server.batch_fail_first_n = 2
        server.batch_expire_keys = {reqs[5].key}
        runner = _runner(server, tmp_path, rounds=2)
        out = runner.run(reqs)
        # round 1: 6 lines, 2 failed + 1 expired; round 2: those 3 again, the expired one expires again
        assert [o.ok for o in out] == [True, True, True, True, True, False]
        assert out[5].error == "batch_expired" and runner.usage.failures["batch_expired"] == 1
        assert runner.usage.requests_sent == 6 + 3 and _creates(server) == 2
        answered = [e["key"] for e in server.log if e["path"] == "batch_line"]
        assert len(answered) == len(set(answered)) == 5


def test_a_server_without_the_batch_api_is_one_line_suggesting_online_mode(tmp_path):
    from vital.llm.engine import FatalAPIError

    with FakeOpenAIServer() as server:
        server.batch_api = False
        runner = _runner(server, tmp_path)
        runner.section = "judge"
        with pytest.raises(FatalAPIError) as e:
            runner.run(_reqs(3))
        assert (
            str(e.value)
            == "judge: the server has no Batch API (/files answered HTTP 405); set judge.mode: online"
        )
        assert _creates(server) == 0 and runner.usage.requests_sent == 0
