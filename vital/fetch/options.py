"""What a fetch is told (FetchOptions), what it fetches (Figure), and how it fails (Permanent)."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class FetchOptions:
    shard_size: int = 2000
    workers: int = 8
    rate: float = 3.0  # requests per second per host
    retries: int = 5
    backoff: float = 1.0  # seconds, doubled each retry (with jitter)
    timeout: float = 60.0
    max_side: int | None = None  # downscale so the longer side is at most this (None: keep bytes as served)
    verify: bool = True  # rehash done shards on a rerun
    user_agent: str = "vital-fetch-images (+https://github.com/; polite, rate-limited)"
    max_package_bytes: int = 2 << 30  # one package, counted while it streams in
    max_member_bytes: int = 64 << 20  # one figure inside a package, from its tar header
    max_pixels: int = 50_000_000  # one figure, from its image header, before decoding
    package_s: float = 1800.0  # one package: download, retries and extraction
    max_redirects: int = 5
    max_retry_after: float = 600.0  # a longer Retry-After fails the package instead of waiting
    staging: Path | None = None  # figures extracted but not yet in a shard; None: <out>/.staging (removed)
    downloads: Path | None = None  # packages being downloaded; None: <out>/.downloads

    def check(self) -> None:
        for name in (
            "shard_size",
            "workers",
            "retries",
            "max_package_bytes",
            "max_member_bytes",
            "max_pixels",
        ):
            if getattr(self, name) < (0 if name == "retries" else 1):
                raise ValueError(f"fetch-images: --{name.replace('_', '-')} must be positive")
        if self.rate <= 0 or self.timeout <= 0 or self.backoff < 0 or self.package_s <= 0:
            raise ValueError("fetch-images: --rate, --timeout and --package-s must be > 0, --backoff >= 0")
        if self.max_side is not None and self.max_side < 8:
            raise ValueError(f"fetch-images: --max-side {self.max_side} is too small (>= 8, or omit it)")


def options_from(source: Any, **rest: Any) -> FetchOptions:
    """FetchOptions from the ``fetch`` params section or the ``vital fetch-images`` arguments, which name
    the bounds alike (package and member sizes in MiB); ``rest`` sets the others (verify, staging, ...)."""
    return FetchOptions(
        shard_size=source.shard_size,
        workers=source.workers,
        rate=source.rate,
        retries=source.retries,
        backoff=source.backoff,
        timeout=source.timeout,
        max_side=source.max_side,
        max_package_bytes=int(source.max_package_mb * 2**20),
        max_member_bytes=int(source.max_member_mb * 2**20),
        max_pixels=source.max_pixels,
        package_s=source.package_s,
        **rest,
    )


@dataclass
class Figure:
    pair_id: str
    url: str
    member: str
    key: str
    shard: int


class Permanent(Exception):
    """A failure that retrying will not fix; ``reason`` is a short code for the report."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class Transient(Exception):
    pass


def url_problem(url: str) -> str:
    """Why ``url`` will not be fetched ('' when it will): only http(s) URLs with a host."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as e:
        return f"unparseable URL ({e})"
    if parts.scheme not in ("http", "https"):
        return f"scheme {parts.scheme + ':' if parts.scheme else 'missing'} (only http and https are fetched)"
    if not parts.hostname:
        return "no host"
    return ""
