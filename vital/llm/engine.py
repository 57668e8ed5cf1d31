"""Async request engine: cache first, then the shared limiter, bounded concurrency and retries.

Every request is looked up in the content-addressed cache; only misses are sent. Each send first
takes capacity from the shared :class:`RateLimiter`. Retries happen here (the SDK's own are off)
so the limiter sees every attempt. A 429 pauses all callers for ``retry-after`` and lowers the
shared rate; it does not use up one of ``max_retries`` (the server is asking to slow down, not
failing), but a request stops after ``rate_limit_wait_s`` of 429s or ``max_rate_limited`` of them,
and every request stops, also one still waiting for the limiter, once the endpoint has answered
nothing but 429s for ``rate_limit_wait_s``: the stage then ends with what it has.
5xx, timeouts, connection errors and malformed bodies back off exponentially with jitter, per
request, up to ``max_retries``. 401/403/404/405 stop the run with a message naming the setting, and
so does a run of ``max_identical_refusals`` identical 400/422 refusals with no success between them
(every further request would repeat it). A completed response is committed to the cache before it
is handed back, so a killed run resumes without paying for it again.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import openai

from vital.llm.accounting import Usage
from vital.llm.cache import RequestCache, request_key
from vital.llm.client import ConfigError, redact, refusal_message
from vital.llm.limiter import RateLimiter
from vital.params import ClientParams
from vital.progress import progress


@dataclass
class Request:
    """One chat-completions request; ``body`` is exactly what is sent (and what is hashed)."""

    body: dict
    est_tokens: int = 0
    tag: Any = None
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = request_key(self.body)


@dataclass
class Outcome:
    request: Request
    response: dict | None
    error: str | None = None
    detail: str = ""
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.response is not None


class FatalAPIError(ConfigError):
    """An error every further request would repeat (bad key, unknown model): the run stops."""


@dataclass
class RetryPolicy:
    max_retries: int = 6  # 5xx, timeouts, connection errors, malformed bodies
    base_s: float = 0.5
    max_s: float = 30.0
    rate_limit_wait_s: float = 600.0  # a request answered 429 for longer than this fails (rate_limited)
    max_rate_limited: int = 200  # ... as does one answered 429 this many times
    max_identical_refusals: int = 5  # this many identical 400/422 answers in a row stop the run
    max_pause_s: float = 2.0  # longest shared pause after a 429 that names no retry-after

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter."""
        return random.uniform(0, min(self.max_s, self.base_s * 2**attempt))


def _status_reason(status: int) -> str:
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "server_error"
    return f"http_{status}"


class Engine:
    def __init__(
        self,
        client: openai.AsyncOpenAI,
        limiter: RateLimiter,
        cache: RequestCache,
        *,
        concurrency: int = 16,
        retry: RetryPolicy | None = None,
        usage: Usage | None = None,
        client_params: ClientParams | None = None,
        cost_fn: Callable[[Usage], float | None] | None = None,
        section: str = "generate",
    ) -> None:
        self.client = client
        self.limiter = limiter
        self.cache = cache
        self.concurrency = concurrency
        self.retry = retry or RetryPolicy()
        self.usage = usage or Usage()
        self.client_params = client_params
        self.cost_fn = cost_fn
        self.section = section  # names the params in error messages (generate.model, judge.client...)
        self._last_ok = time.monotonic()  # last success (or the start of the run)
        self._limited_since: float | None = None  # first 429 since the last success
        self._refusals: tuple[tuple, int] = ((), 0)  # (status, code, message) of the last refusal, run length

    # ------------------------------------------------------------------ public
    def run(self, requests: Iterable[Request], desc: str = "requests") -> list[Outcome]:
        """Synchronous entry point (one event loop per call)."""
        return asyncio.run(self.arun(list(requests), desc))

    async def arun(self, requests: list[Request], desc: str = "requests") -> list[Outcome]:
        """Answer every request, in input order; duplicates of one key are sent once."""
        outcomes: dict[str, Outcome] = {}
        todo: list[Request] = []
        self._last_ok = time.monotonic()
        self._limited_since = None
        for req in requests:
            if req.key in outcomes:
                continue
            hit = self.cache.get(req.key)
            if hit is not None:
                self.usage.cache_hits += 1
                outcomes[req.key] = Outcome(req, hit, cached=True)
            else:
                outcomes[req.key] = None  # type: ignore[assignment]
                todo.append(req)
        bar = progress(total=len(todo), desc=desc, unit="req")
        queue: asyncio.Queue[Request] = asyncio.Queue()
        for req in todo:
            queue.put_nowait(req)

        async def worker() -> None:
            while True:
                try:
                    req = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                outcomes[req.key] = await self._send(req)
                bar.update(1)
                if self.cost_fn is not None:
                    cost = self.cost_fn(self.usage)
                    bar.set_postfix(cost=f"${cost:.4f}" if cost is not None else "n/a", refresh=False)

        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(min(self.concurrency, max(1, len(todo)))):
                    tg.create_task(worker())
        except* FatalAPIError as eg:
            raise eg.exceptions[0] from None
        finally:
            bar.close()
        return [_rebind(outcomes[r.key], r) for r in requests]

    # ------------------------------------------------------------------ one request
    async def _send(self, req: Request) -> Outcome:
        reason, detail = "unknown", ""
        retries = limited = 0
        first_limited: float | None = None
        cap = self.retry.rate_limit_wait_s

        def deadline() -> float | None:
            """When this request gives up on 429s: its own cap, or the endpoint's (nothing but 429s)."""
            ends = [first_limited + cap] if first_limited is not None else []
            if self._limited_since is not None:
                ends.append(self._last_ok + cap)
            return min(ends) if ends else None

        while True:
            if not await self.limiter.acquire(req.est_tokens, deadline):
                reason = "rate_limited"
                detail = f"rate limited for {cap:g} s ({self.section}.client.rate_limit_wait_s)"
                break
            self.usage.requests_sent += 1
            sent_at = time.monotonic()
            try:
                raw = await self.client.chat.completions.with_raw_response.create(**req.body)
            except openai.APIStatusError as e:
                reason, detail = _status_reason(e.status_code), self._clean(e)
                fatal = e.status_code in (401, 403, 404, 405)  # every further request is refused alike
                if fatal or (e.status_code in (400, 422) and self._refused_again(e)):
                    repeated = 1 if fatal else self.retry.max_identical_refusals
                    model = str(req.body.get("model"))
                    raise FatalAPIError(
                        refusal_message(
                            self.section, e.status_code, detail, model, self.client_params, repeated
                        )
                    ) from None
                if e.status_code == 429 and _code(e) == "insufficient_quota":
                    raise FatalAPIError(
                        f"{self.section}: the account behind {self.section}.client.api_key_env has no quota "
                        f"left (HTTP 429 insufficient_quota: {detail}); add credit or use another key"
                    ) from None
                if e.status_code == 429:
                    # not a retry: the server asks to slow down; bounded by time and count instead
                    limited += 1
                    first_limited = first_limited or sent_at
                    if self._limited_since is None:
                        self._limited_since = sent_at
                    self.limiter.rate_limited(
                        e.response.headers,
                        sent_at,
                        min(self.retry.max_pause_s, self.retry.backoff(min(limited, 6))),
                    )
                    now = time.monotonic()
                    if (
                        now - first_limited >= cap
                        or now - self._last_ok >= cap  # the endpoint answered only 429s for that long
                        or limited >= self.retry.max_rate_limited
                    ):
                        break
                    self.usage.retries[reason] += 1
                    continue
                if (e.status_code >= 500 or e.status_code == 408) and await self._backoff(reason, retries):
                    retries += 1
                    continue
                break  # other 4xx: this request is wrong; retrying would pay nothing but repeat it
            except openai.APITimeoutError as e:
                reason, detail = "timeout", self._clean(e)
                if await self._backoff(reason, retries):
                    retries += 1
                    continue
                break
            except openai.APIConnectionError as e:
                reason, detail = "connection", self._clean(e)
                if await self._backoff(reason, retries):
                    retries += 1
                    continue
                break
            self.limiter.update_from_headers(raw.headers)
            data, detail = _decode(raw.text)
            if data is None:
                reason = "bad_response"
                if await self._backoff(reason, retries):
                    retries += 1
                    continue
                break
            self.limiter.succeeded()
            self._last_ok = time.monotonic()
            self._limited_since = None
            self._refusals = ((), 0)
            self.cache.put(req.key, data, model=str(req.body.get("model", "")))
            self.usage.responses += 1
            self.usage.add_tokens(data)
            used = (data.get("usage") or {}).get("total_tokens")
            if used is not None:
                self.limiter.settle(req.est_tokens, int(used))
            return Outcome(req, data)
        self.usage.failures[reason] += 1
        return Outcome(req, None, error=reason, detail=detail)

    async def _backoff(self, reason: str, retries: int) -> bool:
        """Sleep before retry ``retries + 1``; False when ``max_retries`` are used up."""
        if retries >= self.retry.max_retries:
            return False
        self.usage.retries[reason] += 1
        await asyncio.sleep(self.retry.backoff(retries))
        return True

    def _refused_again(self, e: openai.APIStatusError) -> bool:
        """Count a run of identical refusals (status, code, message less its numbers); True at its limit."""
        message = e.message if isinstance(getattr(e, "message", None), str) else str(e)
        shape = (e.status_code, _code(e), re.sub(r"\d+", "#", message)[:200])
        last, run = self._refusals
        run = run + 1 if shape == last else 1
        self._refusals = (shape, run)
        return run >= self.retry.max_identical_refusals

    def _clean(self, e: Exception) -> str:
        return redact(f"{e.__class__.__name__}: {e}", self.client_params)[:300]


def _decode(text: str) -> tuple[dict | None, str]:
    """A chat completion as a dict, or None with why it is unusable."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"response body is not JSON ({e.msg})"
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
        return None, "response has no choices"
    return data, ""


def _code(e: openai.APIStatusError) -> str | None:
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error") if isinstance(body.get("error"), dict) else body
    return getattr(e, "code", None) or err.get("code")


def _rebind(outcome: Outcome, req: Request) -> Outcome:
    """Give each caller its own request (tag) even when a duplicate key was answered once."""
    if outcome.request is req:
        return outcome
    return Outcome(req, outcome.response, outcome.error, outcome.detail, outcome.cached)


def message_content(response: dict) -> tuple[str | None, str | None]:
    """(content, failure reason) of the first choice; ``length``/``content_filter`` are failures."""
    choice = response["choices"][0]
    finish = choice.get("finish_reason")
    if finish in ("length", "content_filter"):
        return None, f"finish_{finish}"
    content = (choice.get("message") or {}).get("content")
    if not content or not str(content).strip():
        return None, "empty_content"
    return str(content), None
