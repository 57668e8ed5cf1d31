"""Async request engine: cache first, then the shared limiter, bounded concurrency and retries.

Every request is looked up in the content-addressed cache; only misses are sent. Each send first
takes capacity from the shared :class:`RateLimiter`. Retries happen here (the SDK's own are off)
so the limiter sees every attempt: 429 pauses all callers for ``retry-after``; 5xx, timeouts,
connection errors and malformed bodies back off exponentially with jitter, per request. A
completed response is committed to the cache before it is handed back, so a killed run resumes
without paying for it again.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import openai

from vital.llm.accounting import Usage
from vital.llm.cache import RequestCache, request_key
from vital.llm.client import ConfigError, redact
from vital.llm.limiter import RateLimiter, retry_after_s
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
    max_retries: int = 6
    base_s: float = 0.5
    max_s: float = 30.0

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
    ) -> None:
        self.client = client
        self.limiter = limiter
        self.cache = cache
        self.concurrency = concurrency
        self.retry = retry or RetryPolicy()
        self.usage = usage or Usage()
        self.client_params = client_params
        self.cost_fn = cost_fn

    # ------------------------------------------------------------------ public
    def run(self, requests: Iterable[Request], desc: str = "requests") -> list[Outcome]:
        """Synchronous entry point (one event loop per call)."""
        return asyncio.run(self.arun(list(requests), desc))

    async def arun(self, requests: list[Request], desc: str = "requests") -> list[Outcome]:
        """Answer every request, in input order; duplicates of one key are sent once."""
        outcomes: dict[str, Outcome] = {}
        todo: list[Request] = []
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
        for attempt in range(self.retry.max_retries + 1):
            if attempt:
                self.usage.retries[reason] += 1
            await self.limiter.acquire(req.est_tokens)
            self.usage.requests_sent += 1
            try:
                raw = await self.client.chat.completions.with_raw_response.create(**req.body)
            except openai.APIStatusError as e:
                reason, detail = _status_reason(e.status_code), self._clean(e)
                if e.status_code in (401, 403, 404):
                    raise FatalAPIError(f"the API refused the request ({e.status_code}): {detail}") from None
                if e.status_code == 429:
                    self.limiter.pause(retry_after_s(e.response.headers) or self.retry.backoff(attempt))
                    continue
                if e.status_code >= 500 or e.status_code == 408:
                    await asyncio.sleep(self.retry.backoff(attempt))
                    continue
                break  # other 4xx: this request is wrong; retrying would pay nothing but repeat it
            except openai.APITimeoutError as e:
                reason, detail = "timeout", self._clean(e)
                await asyncio.sleep(self.retry.backoff(attempt))
                continue
            except openai.APIConnectionError as e:
                reason, detail = "connection", self._clean(e)
                await asyncio.sleep(self.retry.backoff(attempt))
                continue
            self.limiter.update_from_headers(raw.headers)
            data, detail = _decode(raw.text)
            if data is None:
                reason = "bad_response"
                await asyncio.sleep(self.retry.backoff(attempt))
                continue
            self.cache.put(req.key, data, model=str(req.body.get("model", "")))
            self.usage.responses += 1
            self.usage.add_tokens(data)
            used = (data.get("usage") or {}).get("total_tokens")
            if used is not None:
                self.limiter.settle(req.est_tokens, int(used))
            return Outcome(req, data)
        self.usage.failures[reason] += 1
        return Outcome(req, None, error=reason, detail=detail)

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
