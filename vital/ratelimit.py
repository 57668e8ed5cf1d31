"""Request pacing shared by the model-facing client (:mod:`vital.llm.limiter`: RPM/TPM per endpoint) and the
figure fetcher (:class:`HostRateLimiter`: request starts per host): one slot scheduler, one reading of
``Retry-After`` and of OpenAI's reset durations."""

from __future__ import annotations

import datetime
import re
import threading
import time
import urllib.parse
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str | None) -> float | None:
    """Parse OpenAI's reset durations ('1s', '6m0s', '20ms', '0.5') into seconds."""
    if text is None:
        return None
    text = str(text).strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(v) * scale[u] for v, u in parts)


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds form), if present."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    sec = headers.get("retry-after")
    if sec is not None:
        try:
            return max(0.0, float(sec))
        except ValueError:
            pass
        try:  # the HTTP-date form: "Wed, 21 Oct 2026 07:28:00 GMT"
            when = parsedate_to_datetime(sec)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # "-0000": UTC, not the local time
            when = when.replace(tzinfo=datetime.UTC)
        return max(0.0, when.timestamp() - time.time())
    return None


class Slots:
    """Request slots handed out one interval apart (virtual scheduling), with about ``burst_s`` of burst.

    A slot, once given, keeps its time when the rate changes: only later slots move. (A token bucket whose
    negative level is the queue reprices the whole queue at the new rate instead, and a decrease while
    ``concurrency`` callers wait in it leaves seconds with nothing sent.)"""

    def __init__(self, per_minute: float, burst_s: float) -> None:
        self.burst_s = burst_s
        self.next_at = float("-inf")  # the earliest time of the next slot
        self.set_rate(per_minute)

    def set_rate(self, per_minute: float) -> None:
        self.per_minute = float(per_minute)
        self.interval = 60.0 / self.per_minute
        # an idle limiter may send this many at once: one second's worth, at least one
        self.burst = max(1.0, self.burst_s * self.per_minute / 60.0)

    def reserve(self, amount: float, now: float) -> float:
        """Take the next slot; return how long the caller must wait for it."""
        start = max(self.next_at, now - (self.burst - 1) * self.interval)
        self.next_at = start + self.interval
        return max(0.0, start - now)

    def give_back(self, amount: float, now: float) -> None:
        """Return the slot just taken (a caller that will not use it)."""
        self.next_at -= self.interval

    def drain(self, now: float) -> None:
        """Spend the saved-up burst: the next slot is one interval from now at the earliest."""
        self.next_at = max(self.next_at, now)

    def hold(self, until: float) -> None:
        """No slot before ``until`` (a server's Retry-After)."""
        self.next_at = max(self.next_at, until)


class HostRateLimiter:
    """At most ``rate`` request starts per second to each host, across all threads (a :class:`Slots` per
    host, no burst); ``hold`` keeps a host closed until a time (a server's Retry-After)."""

    def __init__(self, rate: float):
        self.per_minute = 60.0 * rate
        self._lock = threading.Lock()
        self._hosts: dict[str, Slots] = {}

    def _slots(self, url: str) -> Slots:
        host = urllib.parse.urlsplit(url).netloc
        if host not in self._hosts:
            self._hosts[host] = Slots(self.per_minute, burst_s=0.0)
        return self._hosts[host]

    def wait(self, url: str, deadline: float | None = None) -> bool:
        """Sleep until this thread's slot for ``url``'s host; False, with nothing taken and no sleep, when the
        slot would come after ``deadline`` (a ``time.monotonic()`` instant)."""
        with self._lock:
            now = time.monotonic()
            slots = self._slots(url)
            wait = slots.reserve(1, now)
            if deadline is not None and now + wait > deadline:
                slots.give_back(1, now)
                return False
        if wait > 0:
            time.sleep(wait)
        return True

    def hold(self, url: str, seconds: float) -> None:
        with self._lock:
            self._slots(url).hold(time.monotonic() + seconds)
