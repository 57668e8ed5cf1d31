"""Rate control against hostile limits, with the real `openai` client and a real local server: a per-minute
window limit below `client.rpm`, a server that answers only 429, and a server that refuses every request the
same way. The tests assert behaviour at small scale (seconds); `bench/rate_limit.py` measures the rate."""

from __future__ import annotations

import time

import openai
import pytest

from tests.openai_server import FakeOpenAIServer
from vital import stats
from vital.llm.cache import RequestCache
from vital.llm.engine import Engine, FatalAPIError, Request, RetryPolicy
from vital.llm.limiter import RateLimiter
from vital.params import ClientParams
from vital.pipeline import STAGES
from vital.stage import call

KEY = "sk-test-abcdefghijklmnop"


def _requests(n: int) -> list[Request]:
    return [
        Request({"model": "test-model", "messages": [{"role": "user", "content": f"q{i}"}], "seed": i}, 50, i)
        for i in range(n)
    ]


def _engine(server, tmp_path, *, rpm, concurrency=8, wait_s=600.0) -> Engine:
    client = openai.AsyncOpenAI(api_key=KEY, base_url=server.base_url, timeout=5, max_retries=0)
    return Engine(
        client,
        RateLimiter(rpm, 10_000_000),
        RequestCache(tmp_path / "cache"),
        concurrency=concurrency,
        retry=RetryPolicy(max_retries=2, base_s=0.01, max_s=0.05, rate_limit_wait_s=wait_s),
    )


@pytest.mark.parametrize("retry_after", [True, False], ids=["retry-after", "no retry-after"])
def test_a_window_limit_below_the_client_rate_answers_everything_within_twice_the_ideal_time(
    tmp_path, retry_after
):
    # 12 requests per 3 s window (240/min, not advertised) against a client told 1,200/min, as 120/min
    # against 600 but 20 times faster: 48 requests need 4 windows, so ideally end early in the 4th
    with FakeOpenAIServer() as server:
        server.window_limit, server.window_s, server.advertise_limits = 12, 3.0, False
        server.window_retry_after = retry_after
        server.retry_after_s = None
        eng = _engine(server, tmp_path, rpm=1_200, concurrency=16)
        t0 = time.monotonic()
        out = eng.run(_requests(48))
        wall = time.monotonic() - t0
        assert all(o.ok for o in out), [o.error for o in out if not o.ok]
        ideal = (48 / 12 - 1) * 3.0  # the first window's answers come at once
        print(f"wall {wall:.1f} s, ideal {ideal:.1f} s, lowest rpm {eng.limiter.lowest_rpm:.0f}")
        assert wall < 2 * ideal, f"{wall:.1f} s against an ideal {ideal:.1f} s"
        # the rate never sank far below the server's limit while its window was closed
        assert eng.limiter.lowest_rpm >= 240 / 2, eng.limiter.lowest_rpm


def test_a_server_that_only_answers_429_ends_the_run_after_the_wait_cap_also_for_queued_requests(tmp_path):
    with FakeOpenAIServer() as server:
        server.only_429 = True
        server.retry_after_s = "0.3"
        eng = _engine(server, tmp_path, rpm=600, concurrency=4, wait_s=1.5)
        t0 = time.monotonic()
        out = eng.run(_requests(40))
        wall = time.monotonic() - t0
        assert [o.error for o in out] == ["rate_limited"] * 40
        assert "rate_limit_wait_s" in out[-1].detail or out[-1].detail.startswith("RateLimitError")
        assert wall < 1.5 + 1.5, f"{wall:.1f} s: requests waiting for the limiter did not give up"
        assert eng.limiter.decreases <= 1  # nothing accepted since the first decrease: no collapse


@pytest.mark.parametrize("status", ["400", "405", "422"])
def test_identical_refusals_stop_the_run_early_naming_the_setting(tmp_path, monkeypatch, status):
    monkeypatch.setenv("VITAL_TEST_KEY", KEY)
    with FakeOpenAIServer() as server:
        server.fault_fn = lambda n, body: status
        eng = _engine(server, tmp_path, rpm=60_000, concurrency=4)
        eng.client_params, eng.section = ClientParams(api_key_env="VITAL_TEST_KEY"), "judge"
        with pytest.raises(FatalAPIError) as err:
            eng.run(_requests(200))
        message = str(err.value)
        assert f"HTTP {status}" in message and "\n" not in message and KEY not in message
        assert ("judge.client.base_url" if status == "405" else "judge.model") in message
        assert len(server.chat_requests()) <= eng.retry.max_identical_refusals + eng.concurrency


def test_different_400s_do_not_stop_the_run(tmp_path):
    # one bad request among good ones (an image the server cannot read) is that request's failure only
    with FakeOpenAIServer() as server:
        server.fault_fn = lambda n, body: "400" if body["seed"] % 7 == 0 else None
        eng = _engine(server, tmp_path, rpm=60_000, concurrency=4)
        out = eng.run(_requests(40))
        assert sum(not o.ok for o in out) == 6 and all(o.error == "http_400" for o in out if not o.ok)


def test_retry_after_as_an_http_date_is_honoured():
    from email.utils import formatdate

    from vital.llm.limiter import retry_after_s

    wait = retry_after_s({"retry-after": formatdate(time.time() + 30, usegmt=True)})
    assert wait is not None and 28 <= wait <= 31


def test_generate_against_a_server_that_only_answers_429_ends_in_one_line_with_its_metrics(
    tmp_path, monkeypatch
):
    from tests.llm_world import KEY as WORLD_KEY
    from tests.llm_world import KEY_ENV, api_params, make_world
    from vital.failures import StageFailed
    from vital.paths import Paths

    monkeypatch.setenv(KEY_ENV, WORLD_KEY)
    monkeypatch.setenv("VITAL_PROGRESS", "off")
    make_world(tmp_path)
    with FakeOpenAIServer() as server:
        server.only_429 = True
        server.retry_after_s = "0.5"
        p = api_params(server.base_url, tmp_path)
        p.generate.client.rate_limit_wait_s = 2.0
        p.generate.client.rpm = 600
        t0 = time.monotonic()
        with pytest.raises(
            StageFailed, match=r"^generate: all 8 candidates failed \(request_rate_limited 8\)"
        ):
            call(STAGES["generate"], p, Paths(tmp_path))
        assert time.monotonic() - t0 < 2.0 + 3.0
    assert stats.detail(tmp_path, "generate")["request_failures"] == {"rate_limited": 8}
