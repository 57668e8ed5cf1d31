"""One client-side rate limiter per endpoint, shared by every caller in the process.

Requests-per-minute and tokens-per-minute budgets are token buckets with about one second of
burst. ``acquire`` reserves capacity and sleeps only the calling task until its reservation is
due (no global sleeps). Budgets tighten from ``x-ratelimit-*`` response headers, and a 429's
``retry-after``/``retry-after-ms`` pauses every caller of the same endpoint until it has passed.

A 429 also lowers the request rate, to ``headroom`` (10%) above the rate the server accepted over
the last 10 s when that is measured (what it lets through while we send above its limit), else by
half, never below ``min_rpm``. It lowers it at most once per observed window: once per round of requests (a 429 for a
request sent before the last decrease does not lower it again), no sooner than ``decrease_every_s``
or the server's last ``retry-after`` after the previous decrease, and only once the server has
accepted a request since then: while a window limit is exhausted, every request is refused, and that
says nothing about the rate, so the rate is held and callers wait. Every success raises the rate
multiplicatively (by ``recover`` per success, so it doubles in about 35 successes) up to the ceiling
(``client.rpm``, or the server's ``x-ratelimit-limit-requests`` if lower). So a server whose real
limit is below ``client.rpm``, advertised or not, settles the limiter at that limit instead of
answering 429 forever or sinking far below it.

The limiter holds no asyncio primitive, so one instance may serve several event loops in turn
(e.g. the generate and judge stages run in one process).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Mapping

from vital.ratelimit import Slots, parse_duration, retry_after_s


class _Bucket:
    """Token bucket whose level may go negative: a negative level is a queue of reservations."""

    def __init__(self, per_minute: float, burst_s: float) -> None:
        self.burst_s = burst_s
        self.level = 0.0
        self.stamp = time.monotonic()
        self.set_rate(per_minute)
        self.level = self.capacity

    def set_rate(self, per_minute: float) -> None:
        self.per_minute = float(per_minute)
        self.rate = self.per_minute / 60.0
        self.capacity = max(1.0, self.rate * self.burst_s)
        self.level = min(self.level, self.capacity)

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def reserve(self, amount: float, now: float) -> float:
        """Take ``amount`` now; return how long the caller must wait before using it."""
        self._refill(now)
        self.level -= amount
        return 0.0 if self.level >= 0 else -self.level / self.rate

    def give_back(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level = min(self.capacity, self.level + amount)


class RateLimiter:
    def __init__(
        self,
        rpm: float,
        tpm: float,
        burst_s: float = 1.0,
        decrease: float = 0.5,
        recover: float = 0.02,
        min_rpm: float = 1.0,
        decrease_every_s: float = 1.0,
        headroom: float = 0.1,
    ) -> None:
        self.configured_rpm = float(rpm)
        self.configured_tpm = float(tpm)
        self.ceiling_rpm = float(rpm)  # configured, or the server's advertised limit if lower
        self.requests = Slots(rpm, burst_s)
        self.tokens = _Bucket(tpm, burst_s)
        self.paused_until = 0.0
        self.pauses = 0
        self.decrease, self.recover, self.min_rpm = decrease, recover, min_rpm
        self.decrease_every_s = decrease_every_s
        self.headroom = headroom
        self.decreases = 0  # times a 429 lowered the request rate
        self.lowest_rpm = float(rpm)
        self._last_decrease = float("-inf")
        self._window_s = decrease_every_s  # the server's window as last observed (its retry-after)
        self._ok_since_decrease = True  # the server accepted a request since the last decrease
        self._ok_times: deque[float] = deque(maxlen=10_000)  # recent successes: the rate the server accepts

    @property
    def rpm(self) -> float:
        return self.requests.per_minute

    @property
    def tpm(self) -> float:
        return self.tokens.per_minute

    async def acquire(self, tokens: int = 0, deadline: Callable[[], float | None] | None = None) -> bool:
        """Wait until one request of ``tokens`` estimated tokens fits both budgets; True when it may be sent.

        ``deadline()`` (a ``time.monotonic()`` instant, or None for none) is asked again whenever the wait
        would pass it: False, with nothing reserved, once a wait would end after it (the caller gives up)."""
        while True:
            now = time.monotonic()
            end = deadline() if deadline is not None else None
            end = math.inf if end is None else end
            if now >= end:
                return False
            if self.paused_until > now:
                await asyncio.sleep(min(self.paused_until, end) - now)
                continue
            wait = max(self.requests.reserve(1, now), self.tokens.reserve(tokens, now))
            if now + wait > end:  # would be sent too late: give the reservation back, then ask again
                self.requests.give_back(1, now)
                self.tokens.give_back(tokens, now)
                await asyncio.sleep(max(0.0, end - now))
                continue
            if wait > 0:
                await asyncio.sleep(wait)
            while self.paused_until > time.monotonic():  # a 429 came in meanwhile: wait it out, keep the slot
                end = deadline() if deadline is not None else None
                if end is not None and self.paused_until > end:
                    return False
                await asyncio.sleep(self.paused_until - time.monotonic())
            return True

    def settle(self, estimated: int, actual: int) -> None:
        """Correct a token reservation once the response reports real usage."""
        now = time.monotonic()
        if actual < estimated:
            self.tokens.give_back(estimated - actual, now)
        elif actual > estimated:
            self.tokens.reserve(actual - estimated, now)

    def pause(self, seconds: float) -> None:
        """Hold every caller (a 429 from the server) until ``seconds`` from now."""
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)
        self.pauses += 1

    def rate_limited(self, headers: Mapping[str, str] | None, sent_at: float, fallback_s: float) -> float:
        """A 429 for a request sent at ``sent_at``: adopt the server's limits, pause every caller for its
        ``retry-after`` (else ``fallback_s``), and lower the request rate once per round. Returns the pause."""
        headers = headers or {}
        self.update_from_headers(headers)
        wait = retry_after_s(headers)
        if wait is None:
            wait = fallback_s
        self.pause(wait)
        now = time.monotonic()
        # the server has nothing left now: a burst when the pause ends would only be refused again
        self.requests.drain(now)
        if (
            sent_at
            >= self._last_decrease  # once per round: one sent before the last decrease says nothing new
            and now - self._last_decrease >= self._window_s  # once per observed window
            and self._ok_since_decrease  # a closed window refuses everything, whatever the rate
        ):
            accepted = self.accepted_rpm(now)
            # a little above what got through: sending under the server's limit loses answers for good,
            # sending a little over it costs only 429s, which are free and answered with a short pause
            target = self.rpm * self.decrease if accepted is None else accepted * (1 + self.headroom)
            if target < self.rpm:
                self._last_decrease = now
                self._ok_since_decrease = False
                self.decreases += 1
                self._set_rpm(max(self.min_rpm, target))
        self._window_s = max(self.decrease_every_s, wait)
        return wait

    def accepted_rpm(self, now: float, window_s: float = 10.0, min_count: int = 5) -> float | None:
        """Successes per minute over the last ``window_s`` (from the first success, if later), or None
        when fewer than ``min_count`` successes make that estimate."""
        while self._ok_times and self._ok_times[0] < now - window_s:
            self._ok_times.popleft()
        if len(self._ok_times) < min_count:
            return None
        return len(self._ok_times) * 60.0 / max(1.0, now - self._ok_times[0])

    def succeeded(self) -> None:
        """A request went through: raise the request rate multiplicatively back towards the ceiling."""
        self._ok_times.append(time.monotonic())
        self._ok_since_decrease = True
        if self.rpm < self.ceiling_rpm:
            self._set_rpm(min(self.ceiling_rpm, self.rpm * (1 + self.recover)))

    def _set_rpm(self, rpm: float) -> None:
        self.requests.set_rate(rpm)
        self.lowest_rpm = min(self.lowest_rpm, rpm)

    def update_from_headers(self, headers: Mapping[str, str]) -> None:
        """Tighten budgets to the server's ``x-ratelimit-*`` limits (never loosen past params)."""
        limit = _number(headers.get("x-ratelimit-limit-requests"))
        if limit and limit < self.ceiling_rpm:
            self.ceiling_rpm = limit
            if self.rpm > limit:
                self._set_rpm(limit)
        limit = _number(headers.get("x-ratelimit-limit-tokens"))
        if limit and limit < self.tokens.per_minute and limit <= self.configured_tpm:
            self.tokens.set_rate(limit)
        for kind in ("requests", "tokens"):
            remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
            if remaining is not None and remaining <= 0:
                reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
                if reset:
                    self.pause(reset)


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


_SHARED: dict[str, RateLimiter] = {}


def shared_limiter(scope: str, rpm: float, tpm: float) -> RateLimiter:
    """The process-wide limiter for one endpoint; a second caller tightens it to the lower budget."""
    lim = _SHARED.get(scope)
    if lim is None:
        lim = _SHARED[scope] = RateLimiter(rpm, tpm)
        return lim
    if rpm < lim.configured_rpm:
        lim.configured_rpm = rpm
        lim.ceiling_rpm = min(lim.ceiling_rpm, rpm)
        if lim.rpm > rpm:
            lim._set_rpm(rpm)
    if tpm < lim.configured_tpm:
        lim.configured_tpm = tpm
        lim.tokens.set_rate(tpm)
    return lim
