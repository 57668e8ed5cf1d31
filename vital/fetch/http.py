"""Downloads: http(s) only, redirects followed by hand, per-host rate limit with Retry-After, bounded while streaming."""

from __future__ import annotations

import http.client
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from vital.fetch.options import FetchOptions, Permanent, Transient, url_problem
from vital.ratelimit import HostRateLimiter, retry_after_s

_REDIRECTS = (301, 302, 303, 307, 308)


def _opener() -> urllib.request.OpenerDirector:
    """http(s) only (no file:, data:, ftp: handlers) and no automatic redirects: a 3xx comes back as an
    HTTPError that :func:`_get_once` follows by hand, checking the scheme and rate-limiting each hop."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


_OPENER = _opener()


def download(
    url: str, dest: Path, opts: FetchOptions, limiter: HostRateLimiter, deadline: float | None = None
) -> int:
    """GET ``url`` into ``dest`` with retries; returns the number of attempts. Raises Permanent."""
    deadline = time.monotonic() + opts.package_s if deadline is None else deadline
    last = ""
    for attempt in range(opts.retries + 1):
        if attempt:
            delay = opts.backoff * 2 ** (attempt - 1) * (0.5 + random.random())
            if time.monotonic() + delay > deadline:
                raise Permanent(
                    "package_timeout", f"no complete download in {opts.package_s:g} s; last: {last}"
                )
            time.sleep(delay)
        try:
            _get_once(url, dest, opts, limiter, deadline)
            return attempt + 1
        except Transient as e:
            last = str(e)
    raise Permanent("retries_exhausted", f"{opts.retries + 1} attempts, last: {last}")


def _get_once(url: str, dest: Path, opts: FetchOptions, limiter: HostRateLimiter, deadline: float) -> None:
    current, hops = url, 0
    while True:
        if not limiter.wait(current, deadline):
            host = urllib.parse.urlsplit(current).netloc
            raise Permanent("package_timeout", f"{host} is rate-limited past the package's deadline")
        left = deadline - time.monotonic()
        if left <= 0:
            raise Permanent("package_timeout", f"not complete after {opts.package_s:g} s")
        req = urllib.request.Request(current, headers={"User-Agent": opts.user_agent})
        try:
            with _OPENER.open(req, timeout=min(opts.timeout, left)) as resp:
                _stream(resp, dest, opts, deadline)
                return
        except urllib.error.HTTPError as e:
            if e.code in _REDIRECTS:
                location = e.headers.get("Location")
                e.close()
                target = urllib.parse.urljoin(current, location) if location else ""
                problem = url_problem(target) if target else "no Location header"
                if problem:
                    raise Permanent("bad_redirect", f"{current} -> {target[:200]!r}: {problem}") from None
                hops += 1
                if hops > opts.max_redirects:
                    raise Permanent(
                        "too_many_redirects", f"more than {opts.max_redirects} from {url}"
                    ) from None
                current = target
                continue
            if e.code >= 500 or e.code in (408, 429):
                wait = retry_after_s(e.headers)
                e.close()
                if wait is not None:
                    if wait > opts.max_retry_after:
                        raise Permanent(
                            "rate_limited", f"HTTP {e.code} with Retry-After {wait:g} s (max_retry_after)"
                        ) from None
                    limiter.hold(current, wait)  # every thread waits for this host, not only this one
                raise Transient(f"HTTP {e.code}" + (f" Retry-After {wait:g} s" if wait else "")) from None
            e.close()
            reason = {404: "not_found", 410: "withdrawn"}.get(e.code, f"http_{e.code}")
            raise Permanent(reason, f"HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, str):  # "unknown url type" and the like
                raise Permanent("bad_url", f"{current[:200]}: {e.reason}") from None
            raise Transient(f"{type(e.reason).__name__}: {e.reason}") from None
        except (ConnectionError, TimeoutError, http.client.HTTPException, OSError) as e:
            raise Transient(f"{type(e).__name__}: {e}") from None


_GZIP_MAGIC = b"\x1f\x8b"


def _stream(resp, dest: Path, opts: FetchOptions, deadline: float) -> None:
    """The body into ``dest`` in chunks, bounded by ``max_package_bytes`` and the deadline; a body that
    is not gzip (an HTML page served with 200) is refused at its first bytes."""
    cap = opts.max_package_bytes
    expected = resp.headers.get("Content-Length")
    if expected is not None and expected.isdigit() and int(expected) > cap:
        raise Permanent("package_too_large", f"Content-Length {expected} > max_package_bytes {cap}")
    got, head = 0, b""
    with dest.open("wb") as f:
        while True:
            if time.monotonic() > deadline:
                raise Permanent("package_timeout", f"{got} bytes after {opts.package_s:g} s (package_s)")
            chunk = resp.read1(1 << 16)
            if not chunk:
                break
            if len(head) < 2:
                head = (head + chunk)[:2]
                if len(head) == 2 and head != _GZIP_MAGIC:
                    kind = resp.headers.get("Content-Type") or "no Content-Type"
                    raise Permanent("not_a_package", f"served {kind}, starting {chunk[:24]!r}, not gzip")
            got += len(chunk)
            if got > cap:
                raise Permanent("package_too_large", f"body passed max_package_bytes {cap} while streaming")
            f.write(chunk)
    if expected is not None and expected.isdigit() and got != int(expected):
        raise Transient(f"short body: {got} of {expected} bytes")
    if got < 2:
        raise Permanent("not_a_package", f"{got}-byte body")
