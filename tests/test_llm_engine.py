"""The engine against a real local OpenAI-compatible server (the SDK's httpx2 cannot be mocked)."""

from __future__ import annotations

import time

import openai
import pytest

from tests.openai_server import FakeOpenAIServer
from vital.llm.cache import RequestCache, request_key
from vital.llm.client import redact
from vital.llm.engine import Engine, FatalAPIError, Request, RetryPolicy, message_content
from vital.llm.limiter import RateLimiter, parse_duration, retry_after_s, shared_limiter
from vital.params import ClientParams

KEY = "sk-test-abcdefghijklmnop"


def _client(server: FakeOpenAIServer, timeout: float = 2.0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=KEY, base_url=server.base_url, timeout=timeout, max_retries=0)


def _requests(n: int, tag: str = "") -> list[Request]:
    return [
        Request(
            {"model": "test-model", "messages": [{"role": "user", "content": f"q{tag}{i}"}], "seed": i},
            est_tokens=50,
            tag=i,
        )
        for i in range(n)
    ]


def _engine(server, tmp_path, *, concurrency=4, retries=4, rpm=60_000, timeout=2.0) -> Engine:
    return Engine(
        _client(server, timeout),
        RateLimiter(rpm, 10_000_000),
        RequestCache(tmp_path / "cache"),
        concurrency=concurrency,
        retry=RetryPolicy(max_retries=retries, base_s=0.01, max_s=0.05),
    )


def test_all_answered_then_rerun_sends_nothing(tmp_path):
    with FakeOpenAIServer(latency=0.01) as server:
        eng = _engine(server, tmp_path)
        out = eng.run(_requests(20))
        assert all(o.ok for o in out) and [o.request.tag for o in out] == list(range(20))
        assert eng.usage.requests_sent == 20 and eng.usage.cache_hits == 0
        assert eng.usage.input_tokens > 0 and eng.usage.output_tokens > 0
        eng2 = _engine(server, tmp_path)
        out2 = eng2.run(_requests(20))
        assert all(o.ok and o.cached for o in out2)
        assert eng2.usage.requests_sent == 0 and eng2.usage.cache_hits == 20
        assert len(server.chat_requests()) == 20


def test_duplicate_requests_in_one_run_are_sent_once(tmp_path):
    with FakeOpenAIServer() as server:
        reqs = _requests(3) + _requests(3)
        out = _engine(server, tmp_path).run(reqs)
        assert all(o.ok for o in out) and len(out) == 6
        assert len(server.chat_requests()) == 3


def test_faults_are_retried_and_counted_without_repeating_completed_requests(tmp_path):
    with FakeOpenAIServer() as server:
        server.slow_s = 1.0
        server.script.extend(["429", "500", "503", "malformed", "slow", None, "500"])
        eng = _engine(server, tmp_path, concurrency=2, timeout=0.3)
        out = eng.run(_requests(12))
        assert all(o.ok for o in out), [o.error for o in out if not o.ok]
        r = eng.usage.retries
        assert (
            r["rate_limited"] == 1 and r["server_error"] == 3 and r["bad_response"] == 1 and r["timeout"] == 1
        )
        completed = server.completed_keys()
        assert len(completed) == len(set(completed)) == 12
        assert eng.usage.requests_sent == 12 + 6


def test_429_retry_after_pauses_the_shared_limiter(tmp_path):
    with FakeOpenAIServer() as server:
        server.retry_after_s = "0.5"
        server.script.append("429")
        eng = _engine(server, tmp_path, concurrency=1)
        t0 = time.monotonic()
        out = eng.run(_requests(2))
        assert all(o.ok for o in out)
        assert time.monotonic() - t0 >= 0.45
        assert eng.limiter.pauses == 1


def test_retries_exhausted_is_a_recorded_failure(tmp_path):
    with FakeOpenAIServer() as server:
        server.fault_fn = lambda n, body: "503" if body["seed"] == 1 else None
        eng = _engine(server, tmp_path, retries=2)
        out = eng.run(_requests(3))
        assert [o.ok for o in out] == [True, False, True]
        assert out[1].error == "server_error" and eng.usage.failures["server_error"] == 1
        assert eng.usage.retries["server_error"] == 2
        assert request_key(out[1].request.body) not in eng.cache


def test_server_dies_mid_run_then_resume_loses_nothing(tmp_path):
    server = FakeOpenAIServer(latency=0.01).start()
    port = server.port
    server.die_after = 5
    eng = _engine(server, tmp_path, concurrency=1, retries=1)
    out = eng.run(_requests(10))
    good = [o for o in out if o.ok]
    assert len(good) == 5 and all(o.error == "connection" for o in out if not o.ok)
    assert eng.usage.failures["connection"] == 5
    first_completed = server.completed_keys()
    with FakeOpenAIServer(port=port) as again:
        eng2 = _engine(again, tmp_path, concurrency=3)
        out2 = eng2.run(_requests(10))
        assert all(o.ok for o in out2)
        assert eng2.usage.cache_hits == 5 and eng2.usage.requests_sent == 5
        assert not set(again.completed_keys()) & set(first_completed)


def test_auth_error_stops_the_run_without_leaking_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("VITAL_TEST_KEY", KEY)
    with FakeOpenAIServer() as server:
        server.fault_fn = lambda n, body: "401"
        eng = _engine(server, tmp_path)
        eng.client_params = ClientParams(api_key_env="VITAL_TEST_KEY")
        with pytest.raises(FatalAPIError) as err:
            eng.run(_requests(30))
        assert "401" in str(err.value) and KEY not in str(err.value)
        assert len(server.chat_requests()) <= 4  # stops at once, not after 30 refusals


def test_finish_reason_length_and_empty_content_are_failures():
    ok = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}
    assert message_content(ok) == ("hi", None)
    assert message_content({"choices": [{"message": {"content": "hi"}, "finish_reason": "length"}]}) == (
        None,
        "finish_length",
    )
    assert (
        message_content({"choices": [{"message": {"content": ""}, "finish_reason": "content_filter"}]})[1]
        == "finish_content_filter"
    )
    assert (
        message_content({"choices": [{"message": {"content": " "}, "finish_reason": "stop"}]})[1]
        == "empty_content"
    )


def test_limiter_holds_requests_per_minute(tmp_path):
    with FakeOpenAIServer() as server:
        eng = _engine(server, tmp_path, concurrency=16, rpm=1200)  # 20/s, burst 20
        t0 = time.monotonic()
        out = eng.run(_requests(50))
        elapsed = time.monotonic() - t0
        assert all(o.ok for o in out)
        assert elapsed >= (50 - 20) / 20 * 0.95


def test_limiter_primed_from_ratelimit_headers(tmp_path):
    with FakeOpenAIServer(rpm=600) as server:
        eng = _engine(server, tmp_path, rpm=60_000)
        eng.run(_requests(3))
        assert eng.limiter.rpm == 600


def test_shared_limiter_is_one_object_per_scope():
    a = shared_limiter("test|x", 100, 1000)
    b = shared_limiter("test|x", 50, 2000)
    assert a is b and a.rpm == 50 and a.tpm == 1000
    assert shared_limiter("test|y", 100, 1000) is not a


def test_header_parsing():
    assert parse_duration("6m0s") == 360 and parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("1.5s") == 1.5 and parse_duration("2") == 2.0 and parse_duration("x") is None
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_s({"retry-after": "3"}) == 3.0 and retry_after_s({}) is None


def test_cache_is_append_only_and_order_independent(tmp_path):
    c = RequestCache(tmp_path)
    k = request_key({"a": 1, "b": [1, 2]})
    assert k == request_key({"b": [1, 2], "a": 1}) and k != request_key({"a": 1, "b": [2, 1]})
    assert c.put(k, {"v": 1}) and not c.put(k, {"v": 2})
    c.close()
    assert RequestCache(tmp_path).get(k) == {"v": 1}


def test_redact_removes_key(monkeypatch):
    monkeypatch.setenv("MY_KEY", "secret-value-123")
    cp = ClientParams(api_key_env="MY_KEY")
    assert "secret-value-123" not in redact("bad key secret-value-123", cp)
    assert "sk-abcdef" not in redact("Incorrect API key provided: sk-abcdef***wxyz")


# ---------------------------------------------------------------- 429s: no retries used, the rate adapts
def test_429s_below_the_server_limit_use_no_retries_and_lower_the_rate(tmp_path):
    # the server allows 600 rpm and says nothing in headers; the client is told 60,000 rpm and no retries
    with FakeOpenAIServer(rpm=600) as server:
        server.advertise_limits = False
        server.retry_after_s = "0.1"
        eng = _engine(server, tmp_path, concurrency=8, retries=0, rpm=60_000)
        out = eng.run(_requests(40))
        refused = [e["status"] for e in server.chat_requests()].count(429)
        assert refused > 0, "the test needs the server to refuse some requests"
        assert all(o.ok for o in out), [o.error for o in out if not o.ok]
        assert eng.usage.retries["rate_limited"] == refused and eng.usage.failures == {}
        # lowered straight towards what the server lets through, not only halved once a second
        assert eng.limiter.decreases >= 1 and eng.limiter.lowest_rpm < 6_000
        assert len(set(server.completed_keys())) == 40


def test_a_server_that_only_answers_429_fails_requests_after_the_wait_cap(tmp_path):
    with FakeOpenAIServer() as server:
        server.fault_fn = lambda n, body: "429"
        server.retry_after_s = "0.05"
        eng = _engine(server, tmp_path, concurrency=2, retries=6)
        eng.retry.rate_limit_wait_s = 0.5
        t0 = time.monotonic()
        out = eng.run(_requests(10))
        assert [o.error for o in out] == ["rate_limited"] * 10
        assert eng.usage.failures["rate_limited"] == 10
        # the first two wait out the cap; the rest give up at their first 429 (nothing but 429s for 0.5 s)
        assert time.monotonic() - t0 < 5 and len(server.chat_requests()) < 60


def test_insufficient_quota_is_not_waited_out(tmp_path, monkeypatch):
    monkeypatch.setenv("VITAL_TEST_KEY", KEY)
    with FakeOpenAIServer() as server:
        server.fault_fn = lambda n, body: "quota"
        eng = _engine(server, tmp_path)
        eng.client_params = ClientParams(api_key_env="VITAL_TEST_KEY")
        with pytest.raises(FatalAPIError, match=r"generate\.client\.api_key_env has no quota"):
            eng.run(_requests(10))
        assert len(server.chat_requests()) <= 4


def test_limiter_lowers_once_per_observed_window_and_recovers_multiplicatively():
    lim = RateLimiter(600, 1e6, decrease_every_s=0)
    sent = time.monotonic()
    assert lim.rate_limited({"retry-after": "0"}, sent, fallback_s=9) == 0
    assert lim.rpm == 300 and lim.decreases == 1  # fewer than 5 successes measured: halved
    lim.rate_limited({}, sent, fallback_s=0)  # sent before the decrease: the same round
    assert lim.rpm == 300 and lim.decreases == 1
    lim.rate_limited({}, time.monotonic(), fallback_s=0)  # no success since: a closed window, not a rate
    assert lim.rpm == 300 and lim.decreases == 1
    for _ in range(10):
        lim.succeeded()
    assert lim.rpm == pytest.approx(300 * 1.02**10)  # multiplicative, not +1 rpm a success
    for _ in range(100):
        lim.succeeded()
    assert lim.rpm == 600  # back to the ceiling, never past it
    lim.rate_limited({"x-ratelimit-limit-requests": "200", "retry-after": "0"}, time.monotonic(), 0)
    assert lim.ceiling_rpm == 200 and lim.rpm == 200  # the server's advertised limit is the new ceiling
    for _ in range(1000):
        lim.succeeded()
    assert lim.rpm == 200
    busy = RateLimiter(60_000, 1e6)
    for _ in range(20):  # 20 answers within a second: the server takes about 1,200/min, not 60,000
        busy.succeeded()
    busy.rate_limited({}, time.monotonic(), 0)
    assert busy.rpm <= 1_200 * 1.1 and busy.decreases == 1  # with 10% headroom
    slow = RateLimiter(600, 1e6)  # by default at most one decrease a second
    slow.rate_limited({}, time.monotonic(), 0)
    slow.succeeded()
    slow.rate_limited({}, time.monotonic(), 0)
    assert slow.rpm == pytest.approx(300 * 1.02)
    window = RateLimiter(600, 1e6, decrease_every_s=0)  # the server said its window ends in 5 s
    window.rate_limited({"retry-after": "5"}, time.monotonic(), 0)
    window.succeeded()
    window.rate_limited({"retry-after": "5"}, time.monotonic(), 0)
    assert window.decreases == 1  # not again within the observed window


# ---------------------------------------------------------------- refusals that name the setting
def test_refusals_name_the_setting_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("VITAL_TEST_KEY", KEY)
    for fault, section, pattern in [
        ("401", "judge", r"judge\.client\.api_key_env \(VITAL_TEST_KEY\)"),
        ("403", "generate", r"generate\.client\.api_key_env.*generate\.model"),
        ("404", "chat_eval", r"does not serve model 'test-model'; check chat_eval\.model"),
    ]:
        with FakeOpenAIServer() as server:
            server.fault_fn = lambda n, body, fault=fault: fault
            eng = _engine(server, tmp_path)
            eng.client_params, eng.section = ClientParams(api_key_env="VITAL_TEST_KEY"), section
            with pytest.raises(FatalAPIError, match=pattern) as err:
                eng.run(_requests(5))
            assert f"HTTP {fault}" in str(err.value) and KEY not in str(err.value)
            assert "\n" not in str(err.value)


def test_prices_match_exactly_or_by_dated_snapshot():
    from vital.llm import accounting
    from vital.params import Price

    prices = {
        "gpt-4o": Price(input_per_1m=2.5, output_per_1m=10),
        "gpt-4o-2024-05-13": Price(input_per_1m=5, output_per_1m=15),
        "gpt-4": Price(input_per_1m=30, output_per_1m=60),
    }
    assert accounting.price_for(prices, "gpt-4o-mini") is None  # not gpt-4o's price
    assert accounting.price_for(prices, "gpt-4o-typo") is None
    assert accounting.price_for(prices, "gpt-4-turbo") is None
    price_key = accounting.price_key
    assert price_key(prices, "gpt-4o") == "gpt-4o"
    assert price_key(prices, "gpt-4o-2024-08-06") == "gpt-4o"  # the provider's dated snapshot
    assert price_key(prices, "gpt-4o-2024-05-13") == "gpt-4o-2024-05-13"  # its own entry wins
    assert price_key(prices, "gpt-4-0613") == "gpt-4"
    assert price_key(prices, "gpt-4o-2024-08-06-ft") is None
